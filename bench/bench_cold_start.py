"""Cold start of each entry point: a fresh interpreter imports functions/main.py and what the
entry point's first call builds before its first I/O. Prints the time and which Google client
libraries got loaded (each entry point should load only the clients it uses).

    .venv/bin/python -m bench.bench_cold_start [--runs 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CLIENT_LIBRARIES = (
    "google.cloud.firestore",
    "google.cloud.run_v2",
    "google.cloud.pubsub_v1",
    "google.cloud.monitoring_v3",
    "httptools",
)
# What each entry point imports and builds on its first call, before talking to any API.
FIRST_CALL = {
    "breach_counter": "import shared.handlers.breach; runtime.store(); runtime.publisher(); runtime.reader()",
    "rollback": "import shared.handlers.rollback; runtime.store(); runtime.traffic()",
    "emergency_rollback": "import shared.handlers.rollback; runtime.store(); runtime.traffic()",
    "checkpoint": "import shared.handlers.checkpoint; shared.handlers.checkpoint.runtime_clients()",
    "load_test": "import shared.handlers.loadtest; runtime.store(); runtime.traffic(); runtime.writer()",
    "notify": "import shared.handlers.notify; runtime.notify_settings(); runtime.store()",
    "checkpoint_worker": (
        "import shared.handlers.fanout, shared.core.minutes; shared.handlers.checkpoint.runtime_clients()"
    ),
}
ENV = {
    "GOOGLE_CLOUD_PROJECT": "cold-start",
    "CANARY_SERVICES": "projects/cold-start/locations/us-central1/services/shop",
    "FIRESTORE_EMULATOR_HOST": "127.0.0.1:9",  # clients are built, never called
    "PUBSUB_EMULATOR_HOST": "127.0.0.1:9",
    "CLOUD_RUN_API_ENDPOINT": "http://127.0.0.1:9",
    "MONITORING_API_ENDPOINT": "127.0.0.1:9",
}


def probe(entry_point: str) -> dict:
    """Import main.py + the entry point's first-call work in a fresh interpreter."""
    code = (
        "import json, sys, time; t = time.perf_counter(); "
        f"sys.path.insert(0, {str(ROOT / 'functions')!r}); import main; from shared import runtime; "
        f"{FIRST_CALL[entry_point]}; elapsed = time.perf_counter() - t; "
        f"loaded = [m for m in {CLIENT_LIBRARIES!r} if m in sys.modules]; "
        "print(json.dumps({'ms': elapsed * 1000, 'loaded': loaded}))"
    )
    return run_fresh(code)


def run_fresh(code: str) -> dict:
    """Run `code` in a fresh interpreter (ENV: clients are built, never reach a server) and
    return the JSON object its last output line prints."""
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**os.environ, **ENV},
        capture_output=True,
        text=True,
        timeout=120,
    )
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-2000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args(argv)
    for entry_point in FIRST_CALL:
        runs = [probe(entry_point) for _ in range(args.runs)]
        median = statistics.median(run["ms"] for run in runs)
        loads = ", ".join(runs[0]["loaded"])
        print(f"{entry_point:<20} median {median:5.0f} ms over {args.runs}  loads {loads}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
