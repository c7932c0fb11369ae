"""The rehearsal's decision history in Markdown (history.md): a summary per service, then the
decisions, the alerts and the traffic changes, each a table in time order. Also what a
decision is called on the report's chart (`decision_label`)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, datetime

from infra.rehearsal.service_timeline import ServiceTimeline, alert_text, metric_text, split_text
from infra.rehearsal.timeline import DecisionRecord

PNG_NAME = "timeline.png"
HISTORY_NAME = "history.md"

# Decisions that happen every minute or so: ticked on the chart, not labelled (labels would pile up).
ROUTINE_DECISIONS = frozenset({"evidence", "verdict", "checkpoint", "load_test", "load_tests_left_out"})


def _percent_in(message: str) -> str | None:
    found = re.search(r"(\d+(?:\.\d+)?)\s?%", message)
    return f"{found.group(1)}%" if found else None


def decision_label(decision: DecisionRecord) -> str:
    """`rolled back`, `step to 10%`, `started at 5%`: what a vertical line on the chart says."""
    label = decision.kind.replace("_", " ")
    if decision.kind in ("started", "step"):
        percent = _percent_in(decision.message)
        if percent:
            label += f" {'at' if decision.kind == 'started' else 'to'} {percent}"
    return label


def _when(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "Z"


def _cell(text: str) -> str:
    """A Markdown table cell: pipes escaped, one line."""
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(" --- " for _ in headers) + "|"]
    lines += ["| " + " | ".join(_cell(cell) for cell in row) + " |" for row in rows]
    return lines


def _summary(timeline: ServiceTimeline) -> list[str]:
    status = timeline.statuses[-1] if timeline.statuses else None
    verdict = next((s.verdict for s in reversed(timeline.statuses) if s.verdict), None)
    state = f"{status.phase} at {status.percent}%" if status else "no rollout status"
    if verdict:
        state += f", last verdict {verdict}"
    final = split_text(timeline.traffic[-1].split) if timeline.traffic else "-"
    lines = [f"- **{timeline.short_name}**: {state}; final traffic {final}"]
    moments = [(d.at, decision_label(d)) for d in timeline.decisions if d.kind not in ROUTINE_DECISIONS]
    moments += [(a.at, f"alert {alert_text(a)}") for a in timeline.alerts if a.state == "open"]
    lines += [f"  - {_when(when)} {what}" for when, what in sorted(moments, key=lambda moment: moment[0])]
    return lines


def history_markdown(services: dict[str, ServiceTimeline], title: str, *, png_name: str = PNG_NAME) -> str:
    """The decision history, alerts and traffic changes as Markdown tables, each in time order."""
    lines = [f"# {title}", "", f"![timeline]({png_name})", "", "## Summary", ""]
    for timeline in services.values():
        lines += _summary(timeline)
    if not services:
        lines.append("The timeline holds no records.")

    def in_time_order(rows: list[tuple[datetime, int, list[str]]]) -> list[list[str]]:
        return [row for _, _, row in sorted(rows, key=lambda item: (item[0], item[1]))]

    # Sorted by time across services; the timeline's order breaks ties (same-millisecond decisions).
    decisions, alerts, traffic = [], [], []
    for timeline in services.values():
        for index, d in enumerate(timeline.decisions):
            decisions.append((d.at, index, [_when(d.at), timeline.short_name, d.kind, d.message]))
        for index, a in enumerate(timeline.alerts):
            row = [
                _when(a.at),
                timeline.short_name,
                a.revision,
                a.rule,
                a.state,
                metric_text(a.rule, a.observed),
                metric_text(a.rule, a.threshold),
            ]
            alerts.append((a.at, index, row))
        for index, t in enumerate(timeline.traffic):
            traffic.append((t.at, index, [_when(t.at), timeline.short_name, split_text(t.split)]))
    lines += ["", "## Decisions", ""]
    lines += _table(("time (UTC)", "service", "kind", "message"), in_time_order(decisions))
    lines += ["", "## Alerts", ""]
    if alerts:
        headers = ("time (UTC)", "service", "revision", "rule", "state", "observed", "threshold")
        lines += _table(headers, in_time_order(alerts))
    else:
        lines.append("No alerts.")
    lines += ["", "## Traffic changes", ""]
    lines += _table(("time (UTC)", "service", "split"), in_time_order(traffic))
    return "\n".join(lines) + "\n"
