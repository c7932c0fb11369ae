"""An emergency rollback's answer time with a healthy chat webhook and with each misbehaving one,
and how long a notification takes from the decision to the webhook, on the local stack
(emulators, Cloud Run stand-in, functions under functions-framework, a local webhook).

    .venv/bin/python -m bench.bench_notify [--runs 5]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import requests

from infra.chat_webhook import MODES, ChatWebhook
from infra.localstack import PROJECT, local_stack

SERVICE = f"projects/{PROJECT}/locations/us-central1/services/shop"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="emergency rollbacks per webhook mode")
    args = parser.parse_args(argv)
    log_dir = Path(tempfile.mkdtemp(prefix="canary-guard-bench-notify-"))
    hook = ChatWebhook(stall_s=30)
    functions = ("emergency_rollback", "notify")
    with local_stack(
        log_dir, [SERVICE], functions=functions, extra_env={"CHAT_WEBHOOK_URL": hook.url}
    ) as stack:
        url = stack.function_urls["emergency_rollback"]
        print(f"{'webhook':<10} {'runs':>4} {'answer':>16} {'median ms':>10} {'max ms':>8}  delivered ms")
        for mode in MODES:
            hook.mode = mode
            took, delivery, statuses = [], [], set()
            for n in range(args.runs):
                canary = f"shop-{mode[:3]}{n:02d}"
                stack.cloudrun.put_service(
                    SERVICE,
                    ["shop-00001", canary],
                    [
                        {"revision": "shop-00001", "percent": 95},
                        {"revision": canary, "percent": 5, "tag": "canary"},
                    ],
                )
                hook.received.clear()
                start = time.monotonic()
                answer = requests.post(url, json={"service": "shop", "reason": f"bench {mode}"}, timeout=120)
                took.append((time.monotonic() - start) * 1000)
                statuses.add(f"{answer.status_code} {answer.json().get('outcome')}")
                if mode == "ok" and hook.wait_for(f"ROLLED BACK canary {canary}", timeout_s=30):
                    delivery.append((time.monotonic() - start) * 1000)
            shown = f"{statistics.median(delivery):.0f}" if delivery else "-"
            print(
                f"{mode:<10} {args.runs:>4} {'/'.join(sorted(statuses)):>16} "
                f"{statistics.median(took):>10.0f} {max(took):>8.0f}  {shown}"
            )
    hook.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
