"""The rehearsal's live terminal view: per service its traffic split, the last minutes of each
revision against the policy's bars, the rule streaks, phase, verdict and the latest decisions and
alerts, redrawn in place with rich.

When the console is not a terminal (CI logs, a pipe) nothing is redrawn: each new decision, alert
and traffic change is printed once, as one line, so the log reads as a plain history.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Self

from rich import box
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from infra.rehearsal.service_timeline import (
    MetricBars,
    ServiceTimeline,
    alert_text,
    clock_text,
    group_by_service,
    service_short_name,
    split_text,
)
from infra.rehearsal.timeline import AlertRecord, DecisionRecord, MinuteRecord, Record, TrafficRecord
from shared.policy import Policy, load_policy

ROLE_STYLES = {"stable": "blue", "canary": "dark_orange", "other": "magenta"}
# How a minute's value reads against the policy (MetricBars.level).
LEVEL_STYLES = {"rollback": "bold white on red3", "go": "bold yellow", "thin": "dim", "ok": ""}
DECISION_STYLES = {
    "started": "cyan",
    "evidence": "dim",
    "rollback_requested": "bold red",
    "rollback_started": "red",
    "rollback_failed": "bold red reverse",
    "rolled_back": "bold red",
    "step": "bold green",
    "promoted": "bold green",
    "frozen": "yellow",
}
ALERT_STYLES = {"open": "bold red", "renotify": "red", "closed": "green"}
SPLIT_BAR_WIDTH = 40


def streak_style(streak: str) -> str:
    """`3/3` (at its limit) red, `1/3` yellow, `0/3` dim."""
    run, _, limit = streak.partition("/")
    if not run.isdigit() or int(run) == 0:
        return "dim"
    return "bold red" if limit.isdigit() and int(run) >= int(limit) else "yellow"


def decision_line(decision: DecisionRecord) -> str:
    name = service_short_name(decision.service)
    return f"{clock_text(decision.at)} {name} decision {decision.kind}: {decision.message}"


def alert_line(alert: AlertRecord) -> str:
    return f"{clock_text(alert.at)} {service_short_name(alert.service)} alert {alert_text(alert)}"


def traffic_line(change: TrafficRecord) -> str:
    return f"{clock_text(change.at)} {service_short_name(change.service)} traffic {split_text(change.split)}"


class LiveView:
    """`with LiveView() as view: view.update(records, now)`: redraws on a terminal, prints lines elsewhere.

    `live` forces the mode (None: redraw exactly when the console is a terminal).
    """

    def __init__(
        self,
        console: Console | None = None,
        *,
        policy: Policy | None = None,
        title: str = "canary-guard rehearsal",
        minutes_shown: int = 8,
        events_shown: int = 6,
        live: bool | None = None,
    ) -> None:
        self.console = console or Console()
        self.bars = MetricBars.from_policy(policy or load_policy())
        self.title = title
        self.minutes_shown = minutes_shown
        self.events_shown = events_shown
        self.is_live = self.console.is_terminal if live is None else live
        self._live: Live | None = None
        self._printed: set[str] = set()  # JSON of every record already printed as a line
        self._last_split: dict[str, dict[str, int]] = {}
        self._last_verdict: dict[str, str] = {}

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Leave the last frame on screen (live mode)."""
        if self._live is not None:
            self._live.stop()
            self._live = None

    def update(self, records: Sequence[Record], now: datetime) -> None:
        """Show the rehearsal as `records` tell it at `now` (records: the whole timeline so far)."""
        if not self.is_live:
            self._print_new_lines(records)
            return
        frame = self.render(records, now)
        if self._live is None:
            # Refreshed by update() only: the rehearsal updates on every event, and no refresh
            # thread means nothing redraws behind a caller's back.
            self._live = Live(frame, console=self.console, auto_refresh=False)
            self._live.start()
        self._live.update(frame, refresh=True)

    # ---- plain lines -------------------------------------------------------------------------

    def _print_new_lines(self, records: Sequence[Record]) -> None:
        for record in sorted(records, key=lambda record: record.at):
            line = self._line_for(record)
            if line is None:
                continue
            key = record.to_json()
            if key in self._printed:
                continue
            self._printed.add(key)
            self.console.print(line, markup=False, highlight=False, soft_wrap=True)

    def _line_for(self, record: Record) -> str | None:
        if isinstance(record, DecisionRecord):
            # Lines are for news: a healthy minute into the ledger, or the same verdict again,
            # is routine (the live frame and the report still show them).
            if record.kind == "evidence" and "breach" not in record.message:
                return None
            if record.kind == "checkpoint":
                if self._last_verdict.get(record.service) == record.message:
                    return None
                self._last_verdict[record.service] = record.message
            return decision_line(record)
        if isinstance(record, AlertRecord):
            return alert_line(record)
        if isinstance(record, TrafficRecord):
            if self._last_split.get(record.service) == record.split:
                return None  # the same split again is no change
            self._last_split[record.service] = dict(record.split)
            return traffic_line(record)
        return None

    # ---- the frame ---------------------------------------------------------------------------

    def render(self, records: Sequence[Record], now: datetime) -> RenderableType:
        """The whole frame for `records` at `now` (what live mode draws)."""
        services = group_by_service(records)
        panels: list[RenderableType] = [Text(f"{self.title}  ·  {clock_text(now)}", style="bold")]
        if not services:
            panels.append(Text("waiting for the first records…", style="dim"))
        panels.extend(self._service_panel(timeline, now) for timeline in services.values())
        return Group(*panels)

    def _service_panel(self, timeline: ServiceTimeline, now: datetime) -> Panel:
        parts: list[RenderableType] = [
            self._status_text(timeline),
            self._split_text(timeline),
            self._minutes_table(timeline, now),
            Text(""),  # one blank line: the events read apart from the minutes
            self._events_table(timeline),
        ]
        return Panel(
            Group(*parts), title=f"[bold]{timeline.short_name}[/]", title_align="left", box=box.ROUNDED
        )

    def _status_text(self, timeline: ServiceTimeline) -> Text:
        text = Text()
        status = timeline.statuses[-1] if timeline.statuses else None
        if status is None:
            return text.append("no rollout status yet", style="dim")
        text.append("phase ", style="dim").append(status.phase, style="bold")
        text.append("   step ", style="dim").append(f"{status.percent}%", style="bold")
        verdict = next((s.verdict for s in reversed(timeline.statuses) if s.verdict), None)
        text.append("   verdict ", style="dim").append(verdict or "-", style="bold")
        text.append("   streaks ", style="dim")
        for index, (rule, streak) in enumerate(status.streaks.items()):
            if index:
                text.append("  ")
            text.append(f"{rule} {streak}", style=streak_style(streak))
        if not status.streaks:
            text.append("-")
        return text

    def _current_split(self, timeline: ServiceTimeline) -> dict[str, int]:
        if timeline.traffic:
            return dict(timeline.traffic[-1].split)
        if timeline.minutes:
            # No traffic record yet: the split of the latest minute.
            last_at = timeline.minutes[-1].at
            return {m.revision: round(m.share_pct) for m in timeline.minutes if m.at == last_at}
        return {}

    def _split_text(self, timeline: ServiceTimeline) -> Text:
        split = self._current_split(timeline)
        text = Text()
        width = max((len(revision) for revision in split), default=0)
        for revision in sorted(split, key=lambda r: (-split[r], r)):
            percent = split[revision]
            role = timeline.role_of(revision) or "other"
            filled = round(SPLIT_BAR_WIDTH * percent / 100)
            if percent and not filled:
                filled = 1  # a 1 % canary still shows
            text.append(f"{revision:<{width}} ").append(f"{role:<7}", style=ROLE_STYLES.get(role, ""))
            text.append("█" * filled, style=ROLE_STYLES.get(role, ""))
            text.append("░" * (SPLIT_BAR_WIDTH - filled), style="dim")
            text.append(f" {percent:>3}%\n")
        text.rstrip()
        return text

    def _minutes_table(self, timeline: ServiceTimeline, now: datetime) -> RenderableType:
        seen = [m for m in timeline.minutes if m.at <= now]
        minute_starts = sorted({m.at for m in seen})[-self.minutes_shown :]
        if not minute_starts:
            return Text("no metric minutes yet", style="dim")
        by_key = {(m.at, m.revision): m for m in seen if m.at in minute_starts}
        revisions = [r for r in timeline.revisions() if any((at, r) in by_key for at in minute_starts)]
        grid = Table.grid(padding=(0, 3))
        clock = Table(box=box.SIMPLE_HEAD, title="UTC", title_style="dim", pad_edge=False, show_edge=False)
        clock.add_column("minute")
        for at in minute_starts:
            clock.add_row(clock_text(at, seconds=False))
        tables: list[Table] = [clock]
        for revision in revisions:
            role = timeline.role_of(revision) or "other"
            table = Table(
                box=box.SIMPLE_HEAD,
                title=f"{revision} ({role})",
                title_style=ROLE_STYLES.get(role, ""),
                pad_edge=False,
                show_edge=False,
            )
            for header in ("req", "5xx %", "P95 ms", "mem %", "CPU %"):
                table.add_column(header, justify="right")
            for at in minute_starts:
                minute = by_key.get((at, revision))
                table.add_row(*self._minute_cells(minute))
            tables.append(table)
        grid.add_row(*tables)
        return grid

    def _minute_cells(self, minute: MinuteRecord | None) -> list[Text]:
        if minute is None:
            return [Text("-", style="dim")] * 5

        def cell(metric: str, value: float | None, shown: str) -> Text:
            level = self.bars.level(metric, value, minute.requests)
            return Text(shown if value is not None else "-", style=LEVEL_STYLES[level])

        return [
            Text(str(minute.requests)),
            cell("error_rate", minute.error_rate, f"{(minute.error_rate or 0) * 100:.2f}"),
            cell("latency_p95", minute.p95_ms, f"{minute.p95_ms or 0:.0f}"),
            cell("memory", minute.memory, f"{(minute.memory or 0) * 100:.0f}"),
            cell("cpu", minute.cpu, f"{(minute.cpu or 0) * 100:.0f}"),
        ]

    def _events_table(self, timeline: ServiceTimeline) -> RenderableType:
        events: list[DecisionRecord | AlertRecord] = sorted(
            [*timeline.decisions, *timeline.alerts], key=lambda record: record.at
        )[-self.events_shown :]
        if not events:
            return Text("no decisions or alerts yet", style="dim")
        table = Table(box=None, show_header=False, pad_edge=False, expand=True)
        table.add_column("time", no_wrap=True)
        table.add_column("what", no_wrap=True)
        table.add_column("message", no_wrap=True, overflow="ellipsis", ratio=1)
        for event in events:
            if isinstance(event, DecisionRecord):
                what = Text(event.kind, style=DECISION_STYLES.get(event.kind, ""))
                message = event.message
            else:
                what = Text(f"alert {event.state}", style=ALERT_STYLES.get(event.state, ""))
                message = alert_text(event)
            table.add_row(clock_text(event.at), what, Text(message))
        return table
