"""One rehearsal end to end (the go-live rehearsal's real path): a sample canary that starts
failing at its third minute, real requests through the router, metrics written from what was
served, alerts from the policy, canary-guard's functions deciding on an accelerated clock.

It asserts what the release owner is shown: the rollback for the error-rate rule, decided on
the canary's real failing requests, the canary's share of real requests falling to 0 (through
the service URL) once the Cloud Run stand-in's traffic is written, the error rate back at the
stable level afterwards, and a report drawn from the timeline."""

from __future__ import annotations

import os
import sys
from datetime import timedelta

import pytest

from infra.rehearsal.rehearse import Rehearsal, RehearsalOptions, full_name
from infra.rehearsal.scripts import CanaryScript, failing_from
from infra.rehearsal.timeline import AlertRecord, DecisionRecord, MinuteRecord, TrafficRecord, read_timeline

pytestmark = pytest.mark.timeout(420)
EMULATOR_HOSTS = ("PUBSUB_EMULATOR_HOST", "FIRESTORE_EMULATOR_HOST")


@pytest.fixture(scope="module")
def rehearsal(tmp_path_factory):
    out = tmp_path_factory.mktemp("rehearsal")
    script = failing_from(2, error_share=0.2)
    options = RehearsalOptions(out_dir=out, speed=12, rps=120, after_minutes=3, max_minutes=30, live=False)
    emulators_before = {key: os.environ.get(key) for key in EMULATOR_HOSTS}
    with open(out / "console.txt", "w") as console:
        result = Rehearsal([script], options, out=console).run()
    # The rehearsal's own emulators are gone: this process must point where it pointed before.
    assert {key: os.environ.get(key) for key in EMULATOR_HOSTS} == emulators_before
    return result, read_timeline(result.timeline), (out / "console.txt").read_text()


def test_the_failing_canary_is_rolled_back_for_its_error_rate(rehearsal):
    result, records, _ = rehearsal
    shop = result.services["shop"]
    assert shop.met and result.ok
    assert shop.phase == "ROLLED_BACK"
    assert shop.rollback_rule == "error_rate"
    kinds = [r.kind for r in records if isinstance(r, DecisionRecord)]
    assert kinds.index("started") < kinds.index("rollback_requested") < kinds.index("rolled_back")
    # The alert policy fired on the canary's real 5xx, as Cloud Monitoring would.
    opened = [r for r in records if isinstance(r, AlertRecord) and r.state == "open"]
    assert any(r.rule == "error_rate" and r.revision == "shop-00002" for r in opened)


def test_the_rollback_came_from_the_canarys_failing_minutes(rehearsal):
    result, records, _ = rehearsal
    canary = [r for r in records if isinstance(r, MinuteRecord) and r.revision == "shop-00002"]
    bad = [r for r in canary if r.error_rate is not None and r.error_rate > 0.01 and r.requests >= 20]
    assert len(bad) >= 3  # the rule's three consecutive minutes, served for real
    first_bad = min(r.at for r in bad)
    # Off users within minutes of its data arriving: 3 bad minutes + the Monitoring lag + 1.
    assert result.services["shop"].rolled_back_at - first_bad <= timedelta(minutes=3 + 2 + 2)


def test_the_canary_serves_no_user_request_after_the_rollback(rehearsal):
    result, records, _ = rehearsal
    assert result.services["shop"].canary_requests_after_rollback == 0
    splits = [r.split for r in records if isinstance(r, TrafficRecord)]
    assert splits[-1] == {"shop-00001": 100, "shop-00002": 0}
    assert any(split.get("shop-00002") == 5 for split in splits)


def test_the_error_rate_falls_back_to_the_stable_level(rehearsal):
    result, records, _ = rehearsal
    rolled_back = result.services["shop"].rolled_back_at
    minutes = [r for r in records if isinstance(r, MinuteRecord) and r.service == full_name("shop")]
    after = [
        r for r in minutes if r.at >= rolled_back.replace(second=0, microsecond=0) + timedelta(minutes=1)
    ]
    assert after, "the rehearsal ends only after minutes past the rollback are visible"
    served = sum(r.requests for r in after)
    errors = sum(r.errors for r in after)
    assert served > 100 and errors == 0
    # What still reaches the canary is its tag URL's uptime check, not users: its share is ~0.
    assert all(r.share_pct < 1 for r in after if r.revision == "shop-00002")


def test_the_release_owner_gets_a_report_and_the_story(rehearsal):
    result, _, console = rehearsal
    assert result.report is not None and result.report.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (result.report.parent / "history.md").read_text().count("rolled_back") >= 1
    assert "canary-guard start shop --revision shop-00002 --percent 5" in console
    assert "rolled_back" in console


def test_bring_your_own_two_arbitrary_commands(tmp_path):
    """The release owner's own commands: any two that serve HTTP on $PORT. Here the stable one
    is Python's http.server and the canary is the same server that stops after 15 s (a crash
    after a good start): canary-guard sees it down and rolls it back."""
    (tmp_path / "index.html").write_text("hello from the release owner's app\n")
    stable = f"{sys.executable} -m http.server $PORT --bind 127.0.0.1"
    canary = f"timeout 15 {sys.executable} -m http.server $PORT --bind 127.0.0.1"
    options = RehearsalOptions(
        out_dir=tmp_path / "out",
        speed=12,
        rps=60,
        after_minutes=1,
        max_minutes=20,
        stable_cmd=stable,
        canary_cmd=canary,
        live=False,
    )
    script = CanaryScript(service="app", description="your canary", expect="decide")
    with open(tmp_path / "console.txt", "w") as console:
        result = Rehearsal([script], options, out=console).run()
    app = result.services["app"]
    assert app.phase == "ROLLED_BACK" and result.ok
    assert app.rollback_rule in ("canary_down", "error_rate")
    assert app.canary_requests_after_rollback == 0
    records = read_timeline(result.timeline)
    stable_served = sum(
        r.requests for r in records if isinstance(r, MinuteRecord) and r.revision == "app-00001"
    )
    assert stable_served > 500  # the stable command really served the traffic
