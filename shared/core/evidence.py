"""The evidence ledger: what each metric minute said about each rollback rule. Pure, no I/O.

An observation is about a metric minute, not about a delivery. The ledger holds, per rule, one
entry per minute; the same minute seen twice (two deliveries, a checkpoint and an alert-triggered
judgement, a re-read) is one entry, and a late one simply takes its place in time. Two readings of
one minute merge to the stronger kind (breach > ok > skipped > thin): the ledger is a join of
everything seen, so any order and any duplication of the same facts gives the same ledger.

A rule trips when its ledger holds a run of `consecutive` breach minutes anywhere in it (not only
at its end): a run, once seen, is never undone by evidence that arrives later, so the decision
does not depend on delivery order either.

- a minute with too few requests to judge (THIN) breaks a run: three scattered bad minutes in a
  quiet hour are not "3 consecutive minutes" of a breach we could measure;
- a minute of canary-guard's own load test (SKIPPED) bridges a run: synthetic requests must
  neither hide a breach nor reset a streak;
- a minute with no entry at all (not judged, not yet visible) breaks a run until it is filled.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from shared.policy import Policy

MINUTE = timedelta(minutes=1)


class EvidenceKind(StrEnum):
    BREACH = "breach"
    OK = "ok"
    SKIPPED = "skipped"  # canary-guard's own load test ran: bridges a run
    THIN = "thin"  # too few requests to judge: breaks a run


# A reading that knew the minute was our own load test outranks one that judged its requests
# as the users' (it must keep bridging the run); a breach outranks everything.
_RANK = {EvidenceKind.THIN: 0, EvidenceKind.OK: 1, EvidenceKind.SKIPPED: 2, EvidenceKind.BREACH: 3}


def _order(entry: Evidence) -> tuple[int, str, float, int, str]:
    """A total order on readings of one minute: rank first, then a fixed tie-break, so the ledger
    does not depend on which of two equal readings arrived first."""
    value = entry.value if entry.value is not None and math.isfinite(entry.value) else float("-inf")
    return (_RANK[entry.kind], entry.source, value, entry.requests or -1, entry.note)


REQUEST_RULES = ("error_rate", "latency_p95", "canary_down")


def whole_minute(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(second=0, microsecond=0)


def minute_key(minute: datetime) -> str:
    """The ledger's key for a minute (a Firestore map key: no dots)."""
    return f"{whole_minute(minute):%Y-%m-%dT%H:%MZ}"


def parse_minute_key(key: str) -> datetime:
    return datetime.strptime(key, "%Y-%m-%dT%H:%MZ").replace(tzinfo=UTC)


@dataclass(frozen=True)
class Evidence:
    """What one minute said about one rule."""

    rule: str
    minute: datetime  # start of the metric minute (a Monitoring point stamped minute + 1 min)
    kind: EvidenceKind
    source: str  # "metrics" (Cloud Monitoring, read by a checkpoint or an alert) | "uptime"
    value: float | None = None
    threshold: float | None = None
    requests: int | None = None
    note: str = ""

    def as_doc(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"kind": self.kind.value, "source": self.source}
        for name in ("value", "threshold", "requests"):
            if getattr(self, name) is not None:
                doc[name] = getattr(self, name)
        if self.note:
            doc["note"] = self.note
        return doc

    @classmethod
    def from_doc(cls, rule: str, key: str, doc: Mapping[str, Any]) -> Evidence:
        return cls(
            rule=rule,
            minute=parse_minute_key(key),
            kind=EvidenceKind(doc["kind"]),
            source=str(doc.get("source", "")),
            value=doc.get("value"),
            threshold=doc.get("threshold"),
            requests=doc.get("requests"),
            note=str(doc.get("note", "")),
        )

    def describe(self) -> str:
        """e.g. 'error_rate 7.34 % > 1.00 % at 12:05Z (200 requests)'."""
        at = f"{self.minute:%H:%M}Z"
        if self.value is None or self.threshold is None:
            return f"{self.rule} {self.kind.value} at {at}" + (f" ({self.note})" if self.note else "")
        value, threshold = format_value(self.rule, self.value), format_value(self.rule, self.threshold)
        if self.kind is EvidenceKind.THIN:
            return f"{self.rule} {value} at {at} on {self.requests} requests: too few to judge"
        if self.value > self.threshold:
            op = ">"
        elif self.value == self.threshold:
            op = ">=" if self.kind is EvidenceKind.BREACH else "="
        else:
            op = "<="
        text = f"{self.rule} {value} {op} {threshold} at {at}"
        if self.requests is not None:
            text += f" ({self.requests} requests)"
        return text + (f"; {self.note}" if self.note else "")


def format_value(rule: str, value: float) -> str:
    if rule == "latency_p95":
        return f"{value:.0f} ms"
    return f"{value * 100:.2f} %"


Ledger = Mapping[str, Mapping[datetime, Evidence]]


def merge(
    ledger: Ledger, entries: Iterable[Evidence]
) -> tuple[dict[str, dict[datetime, Evidence]], list[Evidence]]:
    """The ledger with `entries` added, and the entries that changed it (new minutes, or a reading
    that outranks the one held), one per minute. Readings of one minute are totally ordered
    (`_order`), so the result is the same whatever order they arrive in."""
    merged = {rule: dict(minutes) for rule, minutes in ledger.items()}
    changed: dict[tuple[str, datetime], Evidence] = {}
    for entry in entries:
        minutes = merged.setdefault(entry.rule, {})
        held = minutes.get(entry.minute)
        if held is None or _order(entry) > _order(held):
            minutes[entry.minute] = entry
            changed[(entry.rule, entry.minute)] = entry
    return merged, list(changed.values())


def prune(ledger: Ledger, *, keep: timedelta, newest: datetime) -> dict[str, dict[datetime, Evidence]]:
    """Drop minutes older than `keep` before `newest`: a run longer than any limit trips long
    before it could be pruned, so only the display of very old runs is lost."""
    horizon = newest - keep
    return {rule: {m: e for m, e in minutes.items() if m >= horizon} for rule, minutes in ledger.items()}


@dataclass(frozen=True)
class Run:
    """A rule's runs of breach minutes in the ledger."""

    rule: str
    limit: int
    trailing: int  # breach minutes at the end of the time-ordered ledger (what status shows)
    longest: int
    tripped: tuple[Evidence, ...] = ()  # the first run that reached the limit, its evidence

    @property
    def tripped_at(self) -> datetime | None:
        return self.tripped[-1].minute if self.tripped else None


def run_of(rule: str, minutes: Mapping[datetime, Evidence], limit: int) -> Run:
    if not minutes:
        return Run(rule, limit, 0, 0)
    run: list[Evidence] = []
    longest = 0
    tripped: tuple[Evidence, ...] = ()
    minute, last = min(minutes), max(minutes)
    while minute <= last:
        entry = minutes.get(minute)
        minute += MINUTE
        if entry is None or entry.kind in (EvidenceKind.OK, EvidenceKind.THIN):
            run = []
        elif entry.kind is EvidenceKind.BREACH:
            run.append(entry)
            longest = max(longest, len(run))
            if len(run) >= limit and not tripped:
                tripped = tuple(run[-limit:])
        # SKIPPED: the run carries on across it
    return Run(rule, limit, len(run), longest, tripped)


def runs(ledger: Ledger, limits: Mapping[str, int]) -> dict[str, Run]:
    return {rule: run_of(rule, ledger.get(rule, {}), limit) for rule, limit in limits.items()}


def first_trip(ledger: Ledger, limits: Mapping[str, int]) -> Run | None:
    """The rule whose run reached its limit at the earliest minute (ties: policy order)."""
    tripped = [run for run in runs(ledger, limits).values() if run.tripped]
    if not tripped:
        return None
    order = list(limits)
    return min(tripped, key=lambda run: (run.tripped_at, order.index(run.rule)))


@dataclass(frozen=True)
class MinuteMetrics:
    """What Cloud Monitoring holds for one revision and one minute. None: no point."""

    minute: datetime  # start of the minute
    requests: int = 0
    errors: int = 0  # 5xx
    latency_p95_ms: float | None = None
    memory: float | None = None  # P99 of container/memory/utilizations, 0..1
    cpu: float | None = None
    synthetic: bool = False  # canary-guard's own load test ran against it in this minute

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.requests if self.requests else None


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def judge_minute(canary: MinuteMetrics, stable: MinuteMetrics | None, policy: Policy) -> list[Evidence]:
    """The canary's evidence for one minute, per rule. A rule without data gives no entry."""
    rules = policy.rollback_rules
    spec = policy.evidence
    against = spec.judge_against_stable
    found: list[Evidence] = []
    rate = canary.error_rate

    def entry(rule: str, kind: EvidenceKind, value: float | None, threshold: float, note: str = "") -> None:
        requests = canary.requests if rule in REQUEST_RULES else None
        found.append(Evidence(rule, canary.minute, kind, "metrics", value, threshold, requests, note))

    def stable_explains(rule: str, value: float) -> str:
        """Non-empty when judging against stable and stable was as bad in the same minute."""
        if not against.enabled or stable is None:
            return ""
        if rule in ("error_rate", "canary_down"):
            if stable.requests < spec.min_requests_per_minute or stable.error_rate is None:
                return ""
            base, margin = stable.error_rate, against.error_rate_margin
            worse = value > base + margin
        elif rule == "latency_p95":
            base = _finite(stable.latency_p95_ms)
            if base is None or stable.requests < spec.min_requests_per_minute:
                return ""
            worse = value > base * (1 + against.latency_p95_margin_ratio)
        else:
            base = _finite(stable.memory)
            if base is None:
                return ""
            worse = value > base + against.memory_margin
        return (
            "" if worse else f"stable {format_value(rule, base)} in the same minute: not the canary's fault"
        )

    def breach_or_ok(rule: str, value: float, threshold: float, breached: bool) -> None:
        if not breached:
            entry(rule, EvidenceKind.OK, value, threshold)
            return
        shared = stable_explains(rule, value)
        entry(rule, EvidenceKind.OK if shared else EvidenceKind.BREACH, value, threshold, shared)

    # Request-based rules: our own load test's minutes carry synthetic requests.
    if canary.synthetic:
        for rule in REQUEST_RULES:
            threshold = spec.down_error_rate if rule == "canary_down" else rules[rule].threshold
            entry(rule, EvidenceKind.SKIPPED, None, threshold, "canary-guard load test")
    else:
        threshold = rules["error_rate"].threshold
        if canary.requests < spec.min_requests_per_minute:
            if canary.requests:
                entry("error_rate", EvidenceKind.THIN, rate, threshold, "too few requests to judge")
        else:
            assert rate is not None
            breach_or_ok("error_rate", rate, threshold, rate > threshold)
        latency = _finite(canary.latency_p95_ms)
        threshold = rules["latency_p95"].threshold
        if latency is not None:
            if canary.requests < spec.min_requests_per_minute:
                entry("latency_p95", EvidenceKind.THIN, latency, threshold, "too few requests to judge")
            else:
                breach_or_ok("latency_p95", latency, threshold, latency > threshold)
        # Down: most requests failing is overwhelming evidence on far fewer requests.
        if canary.requests >= spec.down_min_requests:
            assert rate is not None
            breach_or_ok("canary_down", rate, spec.down_error_rate, rate >= spec.down_error_rate)
        elif canary.requests:
            entry("canary_down", EvidenceKind.THIN, rate, spec.down_error_rate, "too few requests to judge")
    memory = _finite(canary.memory)
    if memory is not None:
        threshold = rules["memory"].threshold
        breach_or_ok("memory", memory, threshold, memory > threshold)
    return found


def uptime_evidence(minute: datetime, failing: bool, policy: Policy, note: str) -> Evidence:
    """canary_down from an uptime-check incident: open is a breach minute, closed an ok one."""
    kind = EvidenceKind.BREACH if failing else EvidenceKind.OK
    return Evidence("canary_down", whole_minute(minute), kind, "uptime", note=note)


def aggregate(minutes: Iterable[MinuteMetrics]) -> MinuteMetrics | None:
    """Several minutes as one window (the backtest's since-step verdict, from recorded per-minute
    series): counts add up, utilisations keep the worst minute, and P95 is the request-weighted
    95th percentile of the minutes' P95s (recorded series carry no histograms to merge)."""
    picked = list(minutes)
    if not picked:
        return None
    real = [m for m in picked if not m.synthetic]
    weighted = sorted((m.latency_p95_ms, m.requests) for m in real if _finite(m.latency_p95_ms) is not None)
    total = sum(n for _, n in weighted)
    p95 = None
    if total:
        seen = 0
        for value, n in weighted:
            seen += n
            if seen >= 0.95 * total:
                p95 = value
                break
    elif weighted:
        p95 = weighted[-1][0]

    def worst(values: Iterable[float | None]) -> float | None:
        known = [v for v in values if v is not None and math.isfinite(v)]
        return max(known) if known else None

    return replace(
        picked[0],
        requests=sum(m.requests for m in real),
        errors=sum(m.errors for m in real),
        latency_p95_ms=p95,
        memory=worst(m.memory for m in picked),
        cpu=worst(m.cpu for m in picked),
        synthetic=False,
    )
