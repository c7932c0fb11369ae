"""What the user of a rehearsal sees: the timeline file, the live view and the final report.

One synthetic rehearsal: shop's canary goes bad at minute 3 (6 % 5xx) and is rolled back at
minute 6 (share 5 → 0, its error rate back to stable's level after); cart's healthy canary is
stepped 5 → 10 % at minute 5.
"""

from __future__ import annotations

import io
import json
import struct
from dataclasses import fields
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from rich.console import Console

from infra.rehearsal import report
from infra.rehearsal.timeline import (
    AlertRecord,
    DecisionRecord,
    MinuteRecord,
    Record,
    StatusRecord,
    TimelineError,
    TimelineWriter,
    TrafficRecord,
    read_timeline,
    record_from_json,
)
from infra.rehearsal.view import LiveView

T0 = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
SHOP = "projects/rehearsal/locations/us-central1/services/shop"
CART = "projects/rehearsal/locations/us-central1/services/cart"
SHOP_ROLLOUT = "rehearsal~us-central1~shop~shop-00002"
CART_ROLLOUT = "rehearsal~us-central1~cart~cart-00002"


def at(minute: float) -> datetime:
    return T0 + timedelta(minutes=minute)


def minute(service, revision, role, m, share, requests, errors, p95, memory, cpu) -> MinuteRecord:
    return MinuteRecord(
        at=at(m),
        service=service,
        revision=revision,
        role=role,
        share_pct=share,
        requests=requests,
        errors=errors,
        error_rate=errors / requests if requests else None,
        p95_ms=p95 if requests else None,
        memory=memory,
        cpu=cpu,
    )


def shop_records() -> list[Record]:
    records: list[Record] = [
        TrafficRecord(at(0), SHOP, {"shop-00001": 95, "shop-00002": 5}),
        DecisionRecord(at(0.05), SHOP, SHOP_ROLLOUT, "started", "canary shop-00002 at 5%, stable shop-00001"),
        StatusRecord(
            at(0.05), SHOP, "RUNNING", 5, {"error_rate": "0/3", "latency_p95": "0/3", "memory": "0/2"}
        ),
    ]
    for m in range(12):
        records.append(
            minute(SHOP, "shop-00001", "stable", m, 95 if m <= 6 else 100, 1900, 2, 118, 0.44, 0.31)
        )
        if m < 3:
            records.append(minute(SHOP, "shop-00002", "canary", m, 5, 100, 0, 126, 0.47, 0.33))
        elif m < 6:
            records.append(minute(SHOP, "shop-00002", "canary", m, 5, 100, 6, 310, 0.52, 0.41))
        elif m == 6:
            records.append(minute(SHOP, "shop-00002", "canary", m, 5, 30, 2, 290, 0.50, 0.36))
        else:  # rolled back: only the uptime check on its canary tag URL reaches it
            records.append(minute(SHOP, "shop-00002", "canary", m, 0, 24, 0, 95, 0.40, 0.05))
    records += [
        AlertRecord(at(4.2), SHOP, "shop-00002", "error_rate", "open", 0.06, 0.01),
        DecisionRecord(
            at(4.25), SHOP, SHOP_ROLLOUT, "evidence", "breach: error_rate 6.00 % > 1.00 %; runs 1/3"
        ),
        StatusRecord(
            at(4.25), SHOP, "RUNNING", 5, {"error_rate": "1/3", "latency_p95": "0/3", "memory": "0/2"}
        ),
        DecisionRecord(
            at(5.2), SHOP, SHOP_ROLLOUT, "evidence", "breach: error_rate 6.00 % > 1.00 %; runs 2/3"
        ),
        StatusRecord(
            at(5.2), SHOP, "RUNNING", 5, {"error_rate": "2/3", "latency_p95": "0/3", "memory": "0/2"}
        ),
        DecisionRecord(
            at(6.2),
            SHOP,
            SHOP_ROLLOUT,
            "evidence",
            "error_rate breached on 3 consecutive minutes (12:03Z–12:05Z): roll back",
        ),
        DecisionRecord(
            at(6.21),
            SHOP,
            SHOP_ROLLOUT,
            "rollback_requested",
            "error_rate breached on 3 consecutive minutes (12:03Z–12:05Z; worst 6.00 % > 1.00 %): roll back",
        ),
        StatusRecord(
            at(6.21),
            SHOP,
            "ROLLING_BACK",
            5,
            {"error_rate": "3/3", "latency_p95": "0/3", "memory": "0/2"},
            "NO_GO",
        ),
        DecisionRecord(at(6.23), SHOP, SHOP_ROLLOUT, "rollback_started", "rolling back to shop-00001"),
        TrafficRecord(at(6.25), SHOP, {"shop-00001": 100, "shop-00002": 0}),
        DecisionRecord(
            at(6.25),
            SHOP,
            SHOP_ROLLOUT,
            "rolled_back",
            "rolled back shop: shop-00001 100%, canary shop-00002 0%",
        ),
        StatusRecord(
            at(6.25),
            SHOP,
            "ROLLED_BACK",
            0,
            {"error_rate": "3/3", "latency_p95": "0/3", "memory": "0/2"},
            "NO_GO",
        ),
        AlertRecord(at(9.5), SHOP, "shop-00002", "error_rate", "closed", 0.0, 0.01),
    ]
    return records


def cart_records() -> list[Record]:
    records: list[Record] = [
        TrafficRecord(at(0), CART, {"cart-00001": 95, "cart-00002": 5}),
        DecisionRecord(at(0.1), CART, CART_ROLLOUT, "started", "canary cart-00002 at 5%, stable cart-00001"),
        StatusRecord(
            at(0.1), CART, "RUNNING", 5, {"error_rate": "0/3", "latency_p95": "0/3", "memory": "0/2"}
        ),
    ]
    for m in range(12):
        canary_share = 5 if m < 5 else (10 if m > 5 else 5)
        records.append(minute(CART, "cart-00001", "stable", m, 100 - canary_share, 950, 1, 140, 0.55, 0.42))
        # cpu 0.82 at minute 8: over the GO bar (80 %), not a rollback rule.
        cpu = 0.82 if m == 8 else 0.40
        records.append(
            minute(CART, "cart-00002", "canary", m, canary_share, 50 * canary_share // 5, 0, 150, 0.58, cpu)
        )
    records += [
        DecisionRecord(
            at(2.5), CART, CART_ROLLOUT, "verdict", "INCONCLUSIVE: 150 requests in the window, 0 5xx"
        ),
        DecisionRecord(at(5.5), CART, CART_ROLLOUT, "verdict", "GO: every GO bar holds"),
        DecisionRecord(at(5.51), CART, CART_ROLLOUT, "step", "step 2/5: cart-00002 to 10%"),
        TrafficRecord(at(5.51), CART, {"cart-00001": 90, "cart-00002": 10}),
        StatusRecord(
            at(5.51), CART, "RUNNING", 10, {"error_rate": "0/3", "latency_p95": "0/3", "memory": "0/2"}, "GO"
        ),
    ]
    return records


def rehearsal_records() -> list[Record]:
    """Both services, interleaved in time order as a rehearsal would append them."""
    return sorted([*shop_records(), *cart_records()], key=lambda record: record.at)


def decisions(records: list[Record]) -> list[DecisionRecord]:
    return [record for record in records if isinstance(record, DecisionRecord)]


# ---- the timeline file ----------------------------------------------------------------------


def test_timeline_round_trips_every_field_of_every_record_type(tmp_path: Path):
    records = rehearsal_records()
    path = tmp_path / "run" / "timeline.jsonl"
    with TimelineWriter(path) as writer:
        writer.write_all(records)
    lines = path.read_text().splitlines()
    assert len(lines) == len(records)
    assert {json.loads(line)["record"] for line in lines} == {
        "minute",
        "traffic",
        "decision",
        "alert",
        "status",
    }
    read = read_timeline(path)
    assert read == records
    for original, back in zip(records, read, strict=True):
        assert type(back) is type(original)
        for spec in fields(original):
            assert getattr(back, spec.name) == getattr(original, spec.name), spec.name
        assert back.at.tzinfo is not None and back.at.utcoffset() == timedelta(0)


def test_writer_appends_and_flushes_each_line_before_close(tmp_path: Path):
    path = tmp_path / "timeline.jsonl"
    first, second = shop_records()[:2]
    writer = TimelineWriter(path)
    writer.write(first)
    # A crash now must leave the line on disk: read it without closing the writer.
    assert read_timeline(path) == [first]
    writer.close()
    with TimelineWriter(path) as again:  # a second writer appends, never truncates
        again.write(second)
    assert read_timeline(path) == [first, second]
    with pytest.raises(ValueError, match="closed"):
        writer.write(first)


def test_malformed_line_is_rejected_with_file_and_line(tmp_path: Path):
    good = shop_records()[0].to_json()
    path = tmp_path / "timeline.jsonl"
    path.write_text(good + "\n" + '{"record": "minute", "at": "2026-03-02T12:00:00Z"}\n' + good + "\n")
    with pytest.raises(TimelineError, match=r"timeline\.jsonl:2: minute record: missing"):
        read_timeline(path)
    path.write_text(good + "\nnot json at all\n")
    with pytest.raises(TimelineError, match=r":2: not JSON"):
        read_timeline(path)
    bad_type = good.replace('"record":"traffic"', '"record":"weather"')
    with pytest.raises(TimelineError, match="unknown record type 'weather'"):
        record_from_json(bad_type)
    wrong_value = json.loads(shop_records()[3].to_json()) | {"requests": "1900"}
    with pytest.raises(TimelineError, match=r"minute\.requests must be int"):
        record_from_json(json.dumps(wrong_value))


def test_torn_last_line_of_a_crashed_run_is_skipped_but_not_a_torn_middle(tmp_path: Path):
    good = shop_records()[0].to_json()
    path = tmp_path / "timeline.jsonl"
    path.write_text(good + "\n" + good[:20])  # the crash cut the last write short
    assert len(read_timeline(path)) == 1
    with pytest.raises(TimelineError, match=":2:"):
        read_timeline(path, skip_torn_tail=False)
    path.write_text(good[:20] + "\n" + good + "\n")
    with pytest.raises(TimelineError, match=":1:"):
        read_timeline(path)


def test_records_refuse_naive_times_and_impossible_minutes():
    with pytest.raises(TimelineError, match="timezone-aware"):
        TrafficRecord(datetime(2026, 3, 2, 12, 0), SHOP, {"a": 100})
    with pytest.raises(TimelineError, match="minute's start"):
        minute(SHOP, "shop-00002", "canary", 0.5, 5, 100, 0, 100, 0.4, 0.3)
    with pytest.raises(TimelineError, match="errors <= requests"):
        minute(SHOP, "shop-00002", "canary", 1, 5, 10, 11, 100, 0.4, 0.3)
    with pytest.raises(TimelineError, match="finite"):
        minute(SHOP, "shop-00002", "canary", 1, 5, 10, 1, float("nan"), 0.4, 0.3)
    with pytest.raises(TimelineError, match="role"):
        minute(SHOP, "shop-00002", "canari", 1, 5, 10, 1, 100, 0.4, 0.3)
    # Types are checked where a record is made, so what is written always reads back.
    with pytest.raises(TimelineError, match=r"status\.percent must be int"):
        StatusRecord(at(1), SHOP, "RUNNING", 5.0, {}, None)
    with pytest.raises(TimelineError, match=r"traffic\.split\['a'\] must be int"):
        TrafficRecord(at(1), SHOP, {"a": "100"})
    with pytest.raises(TimelineError, match=r"alert\.state must be one of"):
        AlertRecord(at(1), SHOP, "shop-00002", "error_rate", "opened", None, None)
    assert minute(SHOP, "shop-00002", "canary", 1, 5, 10, 1, 100, 0.4, 0.3).share_pct == 5.0
    split = {"a": 100}
    change = TrafficRecord(at(1), SHOP, split)
    split["a"] = 0
    assert change.split == {"a": 100}  # the record keeps its own copy


# ---- the report ------------------------------------------------------------------------------


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_report_png_and_markers(tmp_path: Path):
    records = rehearsal_records()
    paths = report.write_report(records, tmp_path / "out", "rehearsal: shop rolled back, cart stepped")
    width, height = png_size(paths.png)
    assert 1200 <= width <= 4000 and 800 <= height <= 3000, (width, height)
    assert paths.png.stat().st_size > 50_000  # a drawn chart, not an empty canvas
    from matplotlib import image

    assert image.imread(paths.png).shape[:2] == (height, width)

    # Every decision is marked on its service's column, at its time, and every alert opening.
    marked = [(m.service, m.at, m.kind) for m in paths.markers if m.source == "decision"]
    assert sorted(marked) == sorted((d.service, d.at, d.kind) for d in decisions(records))
    alerts = [(m.service, m.at, m.kind) for m in paths.markers if m.source == "alert"]
    assert alerts == [(SHOP, at(4.2), "error_rate")]  # the closing is not a marker
    labels = {(m.service, m.label) for m in paths.markers if m.labelled}
    assert {
        (SHOP, "rollback requested"),
        (SHOP, "rolled back"),
        (SHOP, "alert error_rate"),
        (CART, "step to 10%"),
        (SHOP, "started at 5%"),
    } <= labels
    # Routine evidence and verdicts are ticked, not labelled (they would bury the rollback's label).
    assert all(not m.labelled for m in paths.markers if m.kind in ("evidence", "verdict"))


def test_history_lists_every_decision_in_order_and_the_alerts(tmp_path: Path):
    records = rehearsal_records()
    paths = report.write_report(records, tmp_path, "rehearsal")
    text = paths.history.read_text()
    decision_rows = [
        line for line in text.split("## Decisions")[1].split("## Alerts")[0].splitlines() if "| 2026" in line
    ]
    expected = sorted(decisions(records), key=lambda d: d.at)
    assert len(decision_rows) == len(expected)
    for row, decision in zip(decision_rows, expected, strict=True):
        assert decision.kind in row and decision.message in row
        assert decision.at.strftime("%H:%M:%S") in row
    alert_rows = [
        line for line in text.split("## Alerts")[1].split("## Traffic")[0].splitlines() if "| 2026" in line
    ]
    assert ["open" in alert_rows[0], "closed" in alert_rows[1]] == [True, True]
    assert "6.00 %" in alert_rows[0] and "1.00 %" in alert_rows[0]
    assert "![timeline](timeline.png)" in text
    assert (
        "**shop**: ROLLED_BACK at 0%, last verdict NO_GO; final traffic shop-00001 100%, shop-00002 0%"
        in text
    )


def test_history_escapes_pipes_in_messages(tmp_path: Path):
    odd = DecisionRecord(at(1), SHOP, SHOP_ROLLOUT, "paused", "paused by ops | see ticket\nline two")
    text = report.write_report([odd], tmp_path, "odd").history.read_text()
    row = next(line for line in text.splitlines() if "paused by ops" in line)
    assert "paused by ops \\| see ticket line two" in row and row.count(" | ") == 3


def test_cli_rerenders_a_saved_timeline(tmp_path: Path, capsys):
    timeline = tmp_path / "run.jsonl"
    with TimelineWriter(timeline) as writer:
        writer.write_all(rehearsal_records())
    assert report.main([str(timeline), str(tmp_path / "out")]) == 0
    assert png_size(tmp_path / "out" / "timeline.png")[0] > 0
    assert "rolled_back" in (tmp_path / "out" / "history.md").read_text()
    timeline.write_text("{broken\n")
    assert report.main([str(timeline), str(tmp_path / "out2")]) == 2
    assert "run.jsonl:1" in capsys.readouterr().err


# ---- the live view ---------------------------------------------------------------------------


def test_live_view_shows_split_streaks_verdict_and_highlights_values_over_a_bar():
    records = rehearsal_records()
    console = Console(
        record=True, width=140, file=io.StringIO(), force_terminal=True, color_system="truecolor"
    )
    shop_bad_minute = [r for r in records if r.at <= at(6.22)]
    with LiveView(console) as view:
        assert view.is_live
        view.update(records[:5], at(0.2))
        view.update(shop_bad_minute, at(6.22))
    text = console.export_text()
    frame = text[text.rindex("canary-guard rehearsal") :]  # the last frame drawn
    assert "shop-00001" in frame and "95%" in frame and "shop-00002" in frame
    assert "error_rate 3/3" in frame
    assert "ROLLING_BACK" in frame and "NO_GO" in frame
    assert "rollback_requested" in frame
    assert "cart-00002" in frame and "GO" in frame
    assert "12:05Z" in frame and "12:06Z" in frame

    # 6.00 (% 5xx, over the 1 % rollback bar) is styled as a breach; stable's 0.11 is plain.
    segments = list(console.render(view.render(shop_bad_minute, at(6.22))))
    styled = {segment.text.strip(): segment.style for segment in segments if segment.text.strip()}
    assert styled["6.00"] is not None and styled["6.00"].bgcolor is not None
    assert styled["6.00"].bgcolor.name == "red3"
    plain = styled.get("0.11")
    assert plain is None or plain.bgcolor is None
    # 310 ms is over the 200 ms GO bar but under the 500 ms rollback bar: warned, not a breach.
    assert styled["310"].color is not None and styled["310"].bgcolor is None


def test_plain_mode_prints_each_decision_alert_and_traffic_change_once():
    records = rehearsal_records()
    out = io.StringIO()
    console = Console(file=out, width=140, force_terminal=False)
    with LiveView(console) as view:
        assert not view.is_live
        for cut in range(0, len(records) + 1, 7):
            view.update(records[:cut], at(12))
        view.update(records, at(12))
        view.update(records, at(12))
    lines = out.getvalue().splitlines()
    for decision in decisions(records):
        assert sum(decision.message in line for line in lines) == 1, decision.message
    assert sum("alert error_rate open on shop-00002" in line for line in lines) == 1
    assert sum("alert error_rate closed" in line for line in lines) == 1
    assert sum("traffic shop-00001 100%, shop-00002 0%" in line for line in lines) == 1
    assert not any("\x1b[" in line for line in lines)  # no redraw escapes in a log
    assert len(lines) == len(decisions(records)) + 2 + 4  # decisions, 2 alerts, 4 traffic changes
