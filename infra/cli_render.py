"""How the operator CLI shows what shared/handlers/operations.py answers: tables, traffic splits, status,
metrics, history and load-test results. Text only; infra/cli.py parses and runs the commands."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any


def when(value: Any) -> str:
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "Z"
    if isinstance(value, str) and value:
        with contextlib.suppress(ValueError):
            return when(datetime.fromisoformat(value))
    return str(value) if value else "-"


def table_text(headers: Sequence[str], rows: Sequence[Sequence[Any]], indent: str = "") -> str:
    """Left-aligned columns; the last column is never padded (free-text messages go there)."""
    cells = [[str(cell) for cell in row] for row in [headers, *rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = []
    for row in cells:
        padded = [cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=False)]
        lines.append((indent + "  ".join([*padded, row[-1]])).rstrip())
    return "\n".join(lines)


def traffic_text(targets: Sequence[Mapping[str, Any]]) -> str:
    parts = []
    # Biggest share first, whatever order Cloud Run lists them in: stable reads first.
    for target in sorted(targets, key=lambda t: (-t.get("percent", 0), t["revision"])):
        tag = f" [{target['tag']}]" if target.get("tag") else ""
        parts.append(f"{target['revision']} {target.get('percent', 0)}%{tag}")
    return ", ".join(parts) or "-"


def before_after(data: Mapping[str, Any]) -> str:
    before, after = traffic_text(data.get("before") or []), traffic_text(data.get("after") or [])
    return f"  before  {before}\n  after   {after}"


def short_name(service: str, all_names: Sequence[str]) -> str:
    """location/service when every name is in one project (short but unambiguous), else the full name."""
    parts = service.split("/")
    projects = {name.split("/")[1] for name in all_names if name.count("/") == 5}
    if len(parts) == 6 and len(projects) == 1:
        return f"{parts[3]}/{parts[5]}"
    return service


def streaks_text(streaks: Mapping[str, int]) -> str:
    return ", ".join(f"{rule} {count}" for rule, count in streaks.items()) or "none"


def status_detail(data: Mapping[str, Any]) -> str:
    lines = [f"{data['service'].rsplit('/', 1)[-1]}  {data['health']}  {data['why']}".rstrip()]
    rows = [
        ("service", data["service"]),
        ("rollout", f"{data['rollout']} ({data['phase']})"),
        (
            "canary",
            f"{data['canary_revision']} at {data['canary_percent']}%, step {data['step']} "
            f"since {when(data['step_started_at'])}",
        ),
        ("stable", data["stable_revision"]),
        ("paused", "yes" if data["paused"] else "no"),
        ("streaks", streaks_text(data["streaks"])),
        (
            "last verdict",
            f"{data['last_verdict']} at {when(data['last_verdict_at'])}: "
            + "; ".join(data["last_verdict_reasons"])
            if data["last_verdict"]
            else "none yet",
        ),
        (
            "load test",
            f"{data['last_load_test_summary']} at {when(data['last_load_test_at'])}"
            if data.get("last_load_test")
            else "none yet",
        ),
        ("started by", data["started_by"] or "-"),
    ]
    width = max(len(key) for key, _ in rows)
    lines += [f"  {key.ljust(width)}  {value}" for key, value in rows]
    return "\n".join(lines)


def status_table(data: Mapping[str, Any]) -> str:
    names = [row["service"] for row in data["services"]]
    rows = []
    for row in data["services"]:
        if row["health"] == "NONE":
            rows.append([short_name(row["service"], names), "NONE", "-", "-", "-", "-", "no rollout"])
            continue
        paused = " (paused)" if row["paused"] else ""
        rows.append(
            [
                short_name(row["service"], names),
                row["health"],
                row["step"],
                row["canary_revision"],
                f"{row['canary_percent']}%{paused}",
                row["stable_revision"],
                row["why"] or "-",
            ]
        )
    return table_text(["SERVICE", "HEALTH", "STEP", "CANARY", "SHARE", "STABLE", "WHY"], rows)


def measure(value: float | None, unit: str) -> str:
    if value is None:
        return "no data"
    return f"{value:.0f} ms" if unit == "ms" else f"{value * 100:.2f}%"


def metrics_text(data: Mapping[str, Any]) -> str:
    from shared.core.judge import MEASURES  # the unit of each measured value

    window = data["window"]
    head = (
        f"{data['service'].rsplit('/', 1)[-1]} canary {data['canary_revision']}: "
        f"{data['request_count']} requests, {data['error_count']} 5xx "
        f"in ({when(window['start'])}, {when(window['end'])}]"
    )
    rows = []
    for name, bars in data["measured"].items():
        unit = MEASURES[name][2] if name in MEASURES else ""
        rollback = bars.get("rollback_bar")
        rows.append(
            [
                name,
                measure(bars.get("value"), unit),
                measure(bars.get("go_bar"), unit),
                measure(rollback, unit) if rollback is not None else "-",
            ]
        )
    table = table_text(["MEASURE", "VALUE", "GO IF <=", "ROLL BACK IF >"], rows, indent="  ")
    return f"{head}\n{table}\n  verdict  {data['verdict']}: {'; '.join(data['reasons'])}"


def history_text(data: Mapping[str, Any]) -> str:
    rows = []
    for entry in data["entries"]:
        # Who acted is stored under the field its kind uses; an observation names its source.
        who = next(
            (entry[key] for key in ("by", "requested_by", "started_by", "source") if entry.get(key)), ""
        )
        message = entry.get("message") or entry.get("verdict") or ""
        rows.append([when(entry.get("at")), entry.get("kind", "?"), who or "-", message])
    table = table_text(["AT (UTC)", "KIND", "BY", "MESSAGE"], rows, indent="  ")
    return f"history of {data['rollout']} ({len(rows)} entries)\n{table}"


def load_test_text(data: Mapping[str, Any]) -> str:
    results = data["results"]
    load = results.get("load_test", {})
    probe = results.get("probe", {})
    runs = [("load", side, r, r["verdict"]["status"]) for side, r in load.items()]
    runs += [
        ("probe", side, r, probe["verdict"]["sides"][side]) for side, r in probe.items() if side != "verdict"
    ]
    rows = []
    for kind, side, r, verdict in runs:
        failures, latency = r["failures"], r["latency_ms"]
        errors = failures["timeout"] + failures["connection"] + failures["cancelled"]
        percentiles = "/".join(
            "-" if latency[k] is None else f"{latency[k]:.0f}" for k in ("p50", "p95", "p99")
        )
        rows.append(
            [
                kind,
                side,
                r["requests"],
                r["successes"],
                failures["4xx"],
                failures["5xx"],
                r["rate_limited_429"],
                errors,
                f"{r['achieved_rate_per_s']:.1f}",
                percentiles,
                verdict,
            ]
        )
    headers = ["RUN", "SIDE", "REQ", "OK", "4XX", "5XX", "429", "ERR", "REQ/S", "P50/P95/P99 MS", "VERDICT"]
    return f"{data['message']}\n{table_text(headers, rows)}"
