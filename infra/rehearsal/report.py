"""The rehearsal's final report from its timeline: a PNG and the decision history in Markdown.

The PNG has one column per service and four rows on one time axis (traffic share, error rate,
P95, memory), one line per revision, the policy's rollback bars dashed, the minutes over a bar
shaded, and canary-guard's decisions and the alerts opened as vertical lines: a release owner
sees when the canary went bad, when it was rolled back (or stepped) and what happened after.

    python -m infra.rehearsal.report TIMELINE.jsonl OUT_DIR [--title TITLE]

re-renders the report of a saved timeline (also one a crashed run left behind). The Markdown
history is written by infra/rehearsal/history.py.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from infra.rehearsal.history import (
    HISTORY_NAME,
    PNG_NAME,
    ROUTINE_DECISIONS,
    decision_label,
    history_markdown,
)
from infra.rehearsal.service_timeline import MetricBars, ServiceTimeline, group_by_service
from infra.rehearsal.timeline import Record, TimelineError, read_timeline
from shared.policy import Policy, load_policy

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

ROLLBACK_DECISIONS = frozenset({"rollback_requested", "rollback_started", "rollback_failed", "rolled_back"})
ADVANCE_DECISIONS = frozenset({"step", "promoted"})

ROLE_COLOURS = {"stable": "#1f5fa8", "canary": "#f08c00", "other": "#7f7f7f"}
ROLLBACK_COLOUR = "#c92a2a"
ADVANCE_COLOUR = "#2b8a3e"
ALERT_COLOUR = "#862e9c"
OTHER_DECISION_COLOUR = "#495057"
BREACH_SHADE = "#ffc9c9"

# Row → (title, MinuteRecord attribute, policy rule, scale to the axis unit).
METRIC_ROWS: tuple[tuple[str, str, str, float], ...] = (
    ("5xx error rate %", "error_rate", "error_rate", 100.0),
    ("P95 latency ms", "p95_ms", "latency_p95", 1.0),
    ("memory %", "memory", "memory", 100.0),
)
MINUTE = timedelta(minutes=1)


@dataclass(frozen=True)
class Marker:
    """A vertical line the chart draws: a decision or an alert opening, on one service's column."""

    service: str
    at: datetime
    source: Literal["decision", "alert"]
    kind: str  # the decision kind, or the alert's rule
    label: str
    labelled: bool  # False: a routine decision, ticked without a label


@dataclass(frozen=True)
class ReportPaths:
    png: Path
    history: Path
    markers: tuple[Marker, ...]  # everything marked on the chart, per service in time order


def write_report(
    records: Sequence[Record], out_dir: Path, title: str, *, policy: Policy | None = None
) -> ReportPaths:
    """Write `timeline.png` and `history.md` for `records` into `out_dir` (created if missing)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    bars = MetricBars.from_policy(policy or load_policy())
    services = group_by_service(records)
    png_path, history_path = out_dir / PNG_NAME, out_dir / HISTORY_NAME
    markers = _write_png(services, bars, title, png_path)
    history_path.write_text(history_markdown(services, title, png_name=PNG_NAME), encoding="utf-8")
    return ReportPaths(png=png_path, history=history_path, markers=tuple(markers))


# ---- markers --------------------------------------------------------------------------------


def markers_of(timeline: ServiceTimeline) -> list[Marker]:
    """Every decision, and every alert that opened, of one service, in time order."""
    markers = [
        Marker(
            timeline.service,
            decision.at,
            "decision",
            decision.kind,
            decision_label(decision),
            labelled=decision.kind not in ROUTINE_DECISIONS,
        )
        for decision in timeline.decisions
    ]
    markers += [
        Marker(timeline.service, alert.at, "alert", alert.rule, f"alert {alert.rule}", labelled=True)
        for alert in timeline.alerts
        if alert.state == "open"
    ]
    return sorted(markers, key=lambda marker: marker.at)


def _marker_colour(marker: Marker) -> str:
    if marker.source == "alert":
        return ALERT_COLOUR
    if marker.kind in ROLLBACK_DECISIONS:
        return ROLLBACK_COLOUR
    if marker.kind in ADVANCE_DECISIONS:
        return ADVANCE_COLOUR
    return OTHER_DECISION_COLOUR


def _label_groups(markers: Sequence[Marker], span: timedelta) -> list[list[Marker]]:
    """Labelled markers close in time (a rollback's request, start and end within seconds) as one label."""
    near = span * 0.03
    groups: list[list[Marker]] = []
    for marker in (m for m in markers if m.labelled):
        if groups and marker.at - groups[-1][-1].at <= near:
            groups[-1].append(marker)
        else:
            groups.append([marker])
    return groups


def _group_text(group: Sequence[Marker]) -> str:
    labels = list(dict.fromkeys(marker.label for marker in group))
    what = labels[0] if len(labels) == 1 else f"{labels[0]} → {labels[-1]}"
    return f"{group[0].at:%H:%M:%S} {what}"


# ---- the PNG --------------------------------------------------------------------------------


def _write_png(
    services: dict[str, ServiceTimeline], bars: MetricBars, title: str, path: Path
) -> list[Marker]:
    # Cold path: matplotlib only when a report is drawn. Figure + the Agg canvas directly, no
    # pyplot: no global figure state, no display, safe next to a running rehearsal.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    columns = max(len(services), 1)
    figure = Figure(figsize=(8.0 * columns, 11.0), dpi=110, layout="constrained")
    FigureCanvasAgg(figure)
    figure.suptitle(title, fontsize=14, fontweight="bold")
    grid = figure.add_gridspec(4, columns, height_ratios=(1.1, 1, 1, 1))
    markers: list[Marker] = []
    label_rows: list[tuple[Axes, list[list[Marker]]]] = []
    if not services:
        axes = figure.add_subplot(grid[:, 0])
        axes.text(0.5, 0.5, "the timeline holds no records", ha="center", va="center")
        axes.set_axis_off()
    for column, timeline in enumerate(services.values()):
        top = figure.add_subplot(grid[0, column])
        rows = [top] + [figure.add_subplot(grid[row, column], sharex=top) for row in (1, 2, 3)]
        service_markers = _draw_service(rows, timeline, bars)
        markers += service_markers
        start, end = _time_range(timeline)
        label_rows.append((top, _label_groups(service_markers, end - start)))
    if services:
        _draw_key(figure, columns)
        # Lay the figure out once so that label overlaps are measured where the axes will be.
        figure.draw_without_rendering()
        for axes, groups in label_rows:
            _draw_labels(figure, axes, groups)
    figure.savefig(path, format="png")
    return markers


def _draw_key(figure: Figure, columns: int) -> None:
    """What the lines, dashes and shading mean, once for the whole figure."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    handles = [
        Line2D([], [], color=ROLE_COLOURS["stable"], linewidth=2, label="stable revision"),
        Line2D([], [], color=ROLE_COLOURS["canary"], linewidth=2, label="canary revision"),
        Line2D([], [], color=ROLLBACK_COLOUR, linestyle="--", linewidth=1.2, label="policy rollback bar"),
        Patch(color=BREACH_SHADE, label="canary minute over a rollback bar"),
        Line2D([], [], color=ALERT_COLOUR, linestyle=":", linewidth=1.4, label="alert opened"),
        Line2D([], [], color=ROLLBACK_COLOUR, linewidth=1.4, label="rollback decision"),
        Line2D([], [], color=ADVANCE_COLOUR, linewidth=1.4, label="step / promoted"),
        Line2D(
            [], [], color=OTHER_DECISION_COLOUR, linewidth=1.4, label="other decision (short tick: routine)"
        ),
    ]
    # Two entries a row fit one 8-inch column; four fit two or more.
    ncols = 4 if columns > 1 else 2
    figure.legend(handles=handles, loc="outside lower center", ncols=ncols, fontsize=9, frameon=False)


def _time_range(timeline: ServiceTimeline) -> tuple[datetime, datetime]:
    times = [r.at for r in (*timeline.traffic, *timeline.decisions, *timeline.alerts, *timeline.statuses)]
    times += [m.at + MINUTE for m in timeline.minutes] + [m.at for m in timeline.minutes]
    start, end = min(times), max(times)
    return start, max(end, start + MINUTE)


def _revision_label(timeline: ServiceTimeline, revision: str) -> str:
    role = timeline.role_of(revision)
    return f"{revision} ({role})" if role else revision


def _draw_service(rows: list[Axes], timeline: ServiceTimeline, bars: MetricBars) -> list[Marker]:
    from matplotlib import dates

    start, end = _time_range(timeline)
    share_axes = rows[0]
    share_axes.set_title(timeline.short_name, fontsize=13, fontweight="bold", loc="left", pad=34)
    if timeline.short_name != timeline.service:
        share_axes.set_title(timeline.service, fontsize=8, color="#868e96", loc="right", pad=34)
    _draw_shares(share_axes, timeline, end)
    for axes, (label, attribute, rule, scale) in zip(rows[1:], METRIC_ROWS, strict=True):
        _draw_metric(axes, timeline, attribute, rule, scale, bars)
        axes.set_ylabel(label)
    for axes in rows:
        axes.set_xlim(start, end)  # before the labels: their overlap is measured on this axis
    markers = markers_of(timeline)
    _draw_markers(rows, markers)
    for axes in rows:
        axes.grid(True, axis="both", color="#e9ecef", linewidth=0.8)
        axes.set_axisbelow(True)
        axes.xaxis.set_major_formatter(dates.DateFormatter("%H:%M", tz=UTC))
    for axes in rows[:-1]:
        axes.tick_params(labelbottom=False)
    rows[-1].set_xlabel("time (UTC)")
    return markers


def _draw_shares(axes: Axes, timeline: ServiceTimeline, end: datetime) -> None:
    """Each revision's traffic percent as a step line; the canary's share filled and its values written."""
    changes: list[tuple[datetime, dict[str, float]]]
    if timeline.traffic:
        changes = [(change.at, {r: float(p) for r, p in change.split.items()}) for change in timeline.traffic]
    else:
        # No split recorded: each minute's share as its minute record says.
        by_minute: dict[datetime, dict[str, float]] = {}
        for minute in timeline.minutes:
            by_minute.setdefault(minute.at, {})[minute.revision] = minute.share_pct
        changes = sorted(by_minute.items())
    if not changes:
        axes.text(0.5, 0.5, "no traffic recorded", transform=axes.transAxes, ha="center", color="#868e96")
        return
    times = [at for at, _ in changes] + [end]
    for revision in timeline.revisions():
        role = timeline.role_of(revision) or "other"
        colour = ROLE_COLOURS[role]
        shares = [split.get(revision, 0.0) for _, split in changes]
        values = [*shares, shares[-1]]
        axes.step(
            times,
            values,
            where="post",
            color=colour,
            linewidth=2.2,
            label=_revision_label(timeline, revision),
        )
        if role != "stable":
            # A 5 % canary is a thin line at the bottom of 0..100: fill it and write its values.
            axes.fill_between(times, values, step="post", color=colour, alpha=0.25, linewidth=0)
        previous = None
        for at, share in zip(times[:-1], shares, strict=True):
            if share != previous:
                axes.annotate(
                    f"{share:g}%",
                    (at, share),
                    xytext=(3, 4 if share < 50 else -11),
                    textcoords="offset points",
                    color=colour,
                    fontsize=8.5,
                    fontweight="bold",
                )
            previous = share
    axes.set_ylim(-3, 110)
    axes.set_ylabel("traffic share %")
    axes.legend(loc="center left", fontsize=8.5, framealpha=0.9)


def _draw_metric(
    axes: Axes, timeline: ServiceTimeline, attribute: str, rule: str, scale: float, bars: MetricBars
) -> None:
    """One line per revision (a point per minute, at its middle); the rollback bar dashed; breaches shaded."""
    highest = 0.0
    for revision in timeline.revisions():
        minutes = [m for m in timeline.minutes if m.revision == revision]
        if not minutes:
            continue
        role = timeline.role_of(revision) or "other"
        times, values = [], []
        for minute in minutes:
            value = getattr(minute, attribute)
            times.append(minute.at + MINUTE / 2)
            values.append(float("nan") if value is None else value * scale)  # NaN: a gap, not a zero
            if value is not None:
                highest = max(highest, value * scale)
            if minute.role == "canary" and bars.level(rule, value, minute.requests) == "rollback":
                axes.axvspan(minute.at, minute.at + MINUTE, color=BREACH_SHADE, alpha=0.6, linewidth=0)
        axes.plot(
            times,
            values,
            marker="o",
            markersize=3.5,
            linewidth=1.8,
            color=ROLE_COLOURS[role],
            label=_revision_label(timeline, revision),
        )
    bar = bars.rollback.get(rule)
    if bar is not None:
        axes.axhline(bar * scale, color=ROLLBACK_COLOUR, linestyle="--", linewidth=1.2)
        axes.annotate(
            f"roll back > {bar * scale:g}{' ms' if rule == 'latency_p95' else ' %'}",
            (1.0, bar * scale),
            xycoords=("axes fraction", "data"),
            xytext=(-4, 3),
            textcoords="offset points",
            ha="right",
            color=ROLLBACK_COLOUR,
            fontsize=8,
        )
        highest = max(highest, bar * scale)
    axes.set_ylim(0, highest * 1.18 or 1)


def _draw_markers(rows: list[Axes], markers: Sequence[Marker]) -> None:
    for marker in markers:
        colour = _marker_colour(marker)
        if marker.labelled:
            style = ":" if marker.source == "alert" else "-"
            for axes in rows:
                axes.axvline(marker.at, color=colour, linestyle=style, linewidth=1.4, alpha=0.9)
        else:
            # Routine (evidence, verdicts): a short tick at the foot of the traffic row.
            rows[0].axvline(marker.at, ymax=0.06, color=colour, linewidth=1.0, alpha=0.7)


def _draw_labels(figure: Figure, axes: Axes, groups: Sequence[Sequence[Marker]]) -> None:
    """Labels above the traffic row, at their line, raised a lane whenever they would overlap."""
    renderer = figure.canvas.get_renderer()  # type: ignore[attr-defined]
    placed: list[Any] = []
    for group in groups:
        for lane in range(8):
            text = axes.annotate(
                _group_text(group),
                (group[0].at, 1.0),
                xycoords=("data", "axes fraction"),
                xytext=(0, 3 + lane * 11),
                textcoords="offset points",
                ha="left",
                va="bottom",
                fontsize=8,
                color=_marker_colour(group[-1]),
                fontweight="bold",
            )
            box = text.get_window_extent(renderer)
            if not any(box.overlaps(other) for other in placed) or lane == 7:
                placed.append(box)
                break
            text.remove()


# ---- CLI ------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m infra.rehearsal.report", description="Render a rehearsal report from its timeline."
    )
    parser.add_argument("timeline", type=Path, help="the rehearsal's timeline (JSON lines)")
    parser.add_argument("out_dir", type=Path, help="where timeline.png and history.md go")
    parser.add_argument("--title", default=None, help="the report's title (default: the timeline's name)")
    args = parser.parse_args(argv)
    try:
        records = read_timeline(args.timeline)
    except (OSError, TimelineError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    paths = write_report(records, args.out_dir, args.title or f"rehearsal {args.timeline.stem}")
    print(f"{len(records)} records → {paths.png} and {paths.history}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
