"""The README's first command works: the demo runs the whole local stack end to end."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_demo(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "infra.demo", *args], cwd=ROOT, capture_output=True, text=True, timeout=240
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_demo_rolls_back_after_the_third_error_rate_and_the_second_memory_breach():
    out = run_demo("--incidents")
    assert (
        "canary serves 6% 5xx → alert → breach_counter judges it from Cloud Monitoring → error_rate 3/3"
        in out
    )
    assert "error_rate breached on 3 consecutive minutes" in out  # the timeline's rollback request
    assert "rolled back shop: shop-00001 100%, canary shop-00002 0%" in out
    assert (
        "canary serves memory 93% → alert → breach_counter judges it from Cloud Monitoring → memory 2/2"
        in out
    )
    assert "rolled back shop: shop-00001 100%, canary shop-00003 0%" in out
    assert "emergency_rollback dry_run=True → HTTP 200 dry_run" in out
    assert "final traffic of shop: shop-00001 100%, shop-00004 0%" in out
    # One checkpoint minute over both watched services, fanned out to a worker per service.
    assert "checkpoint → cart: checkpoint sent to a worker" in out
    assert "checkpoint_worker → cart: 40 readings (rule × minute) of its healthy minutes" in out
    assert "traffic of cart: cart-00001 95%, cart-00002 5%" in out
    # What the channel read came through the notify function and the local webhook.
    channel = out.split("what the team's chat channel read")[1]
    assert (
        "shop: ROLLED BACK canary shop-00002 (auto): error_rate breached on 3 consecutive minutes" in channel
    )
    assert "shop: ROLLED BACK canary shop-00004 (manual): on-call: checkout errors" in channel
    assert out.rstrip().endswith("stack stopped")


def test_demo_ramp_walks_a_healthy_canary_to_promoted():
    out = run_demo("--ramp")
    assert "shop: canary shop-00005 promoted to 100%" in out
    assert "shop  PROMOTED" in out
    assert "verdict  GO: every GO bar holds" in out


def test_demo_load_test_shows_why_the_probe_fails_and_who_ran_it():
    out = run_demo("--load-test")
    assert "shop: load test FAIL (probe FAIL): probe: canary: " in out  # and its success rate
    assert "shop: load test PASS (load_canary PASS, load_stable PASS)" in out
    assert "load_test release-owner shop: load test FAIL" in " ".join(out.split("history of")[1].split())
