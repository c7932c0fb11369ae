"""The record of a rehearsal: what was served, measured, alerted and decided, minute by minute.

A timeline is a JSON-lines file, one record per line, appended as things happen (each line is
flushed at once), so a run that crashes half way still leaves everything up to the crash for the
report. Every line carries `"record"` (minute, traffic, decision, alert, status) naming its type;
`DecisionRecord.kind` is canary-guard's decision kind (started, evidence, rolled_back, ...).

The helpers at the end (`group_by_service`, `MetricBars`, `metric_text`) are what the live view
and the report both read a timeline with.
"""

from __future__ import annotations

import functools
import json
import math
import threading
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar, Literal, Self, TextIO

from shared.policy import Policy

Role = Literal["stable", "canary", "other"]
AlertState = Literal["open", "closed", "renotify"]
ROLES: tuple[str, ...] = typing.get_args(Role)
ALERT_STATES: tuple[str, ...] = typing.get_args(AlertState)


class TimelineError(ValueError):
    """A timeline line that is not a record (names the file and line when read from a file)."""


def _utc(value: datetime, what: str) -> datetime:
    if not isinstance(value, datetime):
        raise TimelineError(f"{what} must be a datetime, got {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        # A naive time on one side and UTC on the other would silently shift a whole service.
        raise TimelineError(f"{what} must be timezone-aware (UTC), got naive {value.isoformat()}")
    return value.astimezone(UTC)


def _finite(value: float | None, what: str, *, low: float | None = 0.0) -> None:
    if value is None:
        return
    if not math.isfinite(value):
        raise TimelineError(f"{what} must be a finite number, got {value}")
    if low is not None and value < low:
        raise TimelineError(f"{what} must be >= {low}, got {value}")


def _time_text(value: datetime) -> str:
    return value.isoformat().replace("+00:00", "Z")


class _RecordBase:
    """JSON (one line) for the frozen dataclasses below; `record` names the type on the line."""

    record: ClassVar[str]

    def __post_init__(self) -> None:
        # Every field checked against its annotation at construction, so a record that would not
        # read back (a float percent, a naive time) fails where it is made, not in the report.
        # Frozen: the normalised value (UTC time, float from int, a copied dict) via object.__setattr__.
        for name, expected in _field_types(type(self)).items():
            value = _typed(getattr(self, name), expected, f"{self.record}.{name}")
            object.__setattr__(self, name, value)

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"record": self.record}
        for spec in fields(self):  # type: ignore[arg-type]
            value = getattr(self, spec.name)
            data[spec.name] = _time_text(value) if isinstance(value, datetime) else value
        return data

    def to_json(self) -> str:
        # allow_nan=False: NaN is not JSON; __post_init__ already refuses it, this is the backstop.
        return json.dumps(self.to_dict(), ensure_ascii=False, separators=(",", ":"), allow_nan=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        if data.get("record") != cls.record:
            raise TimelineError(f"not a {cls.record} record: record={data.get('record')!r}")
        hints = _field_types(cls)
        names = list(hints)
        missing = [name for name in names if name not in data]
        unknown = sorted(set(data) - set(names) - {"record"})
        if missing or unknown:
            raise TimelineError(f"{cls.record} record: missing {missing or '-'}, unknown {unknown or '-'}")
        values = {
            name: _typed(data[name], hints[name], f"{cls.record}.{name}", decoded=True) for name in names
        }
        return cls(**values)

    @classmethod
    def from_json(cls, line: str) -> Self:
        return cls.from_dict(_json_object(line))


@functools.cache
def _field_types(cls: type) -> dict[str, Any]:
    """Each dataclass field's annotation, resolved (the annotations are strings here)."""
    hints = typing.get_type_hints(cls)
    return {spec.name: hints[spec.name] for spec in fields(cls)}


def _typed(value: Any, expected: Any, what: str, *, decoded: bool = False) -> Any:
    """`value` as the field type `expected`, or a TimelineError saying why not.

    `decoded`: the value comes from JSON, so a datetime field holds its ISO 8601 text.
    """
    origin, args = typing.get_origin(expected), typing.get_args(expected)
    if origin in (types.UnionType, typing.Union):
        if value is None and type(None) in args:
            return None
        (inner,) = [arg for arg in args if arg is not type(None)]
        return _typed(value, inner, what, decoded=decoded)
    if origin is Literal:
        if value not in args:
            raise TimelineError(f"{what} must be one of {list(args)}, got {value!r}")
        return value
    if origin is dict:
        key_type, value_type = args
        if not isinstance(value, dict):
            raise TimelineError(f"{what} must be an object, got {value!r}")
        return {
            _typed(key, key_type, f"{what} key"): _typed(
                item, value_type, f"{what}[{key!r}]", decoded=decoded
            )
            for key, item in value.items()
        }
    if expected is datetime:
        if decoded and isinstance(value, str):
            try:
                value = datetime.fromisoformat(value)
            except ValueError as exc:
                raise TimelineError(f"{what}: {exc}") from None
        return _utc(value, what)
    # bool is an int to Python, never to a timeline.
    if expected is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if expected is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if expected is str and isinstance(value, str):
        return value
    raise TimelineError(f"{what} must be {getattr(expected, '__name__', expected)}, got {value!r}")


def _json_object(line: str) -> dict[str, Any]:
    try:
        data = json.loads(line)
    except json.JSONDecodeError as exc:
        raise TimelineError(f"not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise TimelineError(f"not a JSON object: {line[:80]!r}")
    return data


@dataclass(frozen=True)
class MinuteRecord(_RecordBase):
    """One revision's metrics over one whole minute, as Cloud Monitoring would hold them."""

    record: ClassVar[str] = "minute"
    at: datetime  # the minute's start, UTC
    service: str
    revision: str
    role: Role
    share_pct: float  # the revision's traffic percent during the minute
    requests: int
    errors: int  # 5xx responses
    error_rate: float | None  # errors / requests, a fraction; None without requests
    p95_ms: float | None
    memory: float | None  # utilisation 0..1, the fullest sample of the minute
    cpu: float | None  # utilisation 0..1

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.at.second or self.at.microsecond:
            raise TimelineError(f"minute.at must be a minute's start, got {_time_text(self.at)}")
        if not 0 <= self.errors <= self.requests:
            raise TimelineError(f"minute: need 0 <= errors <= requests, got {self.errors}/{self.requests}")
        _finite(self.share_pct, "minute.share_pct")
        for name in ("error_rate", "p95_ms", "memory", "cpu"):
            _finite(getattr(self, name), f"minute.{name}")


@dataclass(frozen=True)
class TrafficRecord(_RecordBase):
    """A service's traffic split (revision → percent), written whenever it changes."""

    record: ClassVar[str] = "traffic"
    at: datetime
    service: str
    split: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class DecisionRecord(_RecordBase):
    """One of canary-guard's decisions about a rollout (its Firestore decision history)."""

    record: ClassVar[str] = "decision"
    at: datetime
    service: str
    rollout_id: str
    kind: str  # started, evidence, rollback_requested, rolled_back, step, promoted, verdict, ...
    message: str


@dataclass(frozen=True)
class AlertRecord(_RecordBase):
    """A Cloud Monitoring incident on a revision: opened, closed or re-notified."""

    record: ClassVar[str] = "alert"
    at: datetime
    service: str
    revision: str
    rule: str
    state: AlertState
    observed: float | None
    threshold: float | None

    def __post_init__(self) -> None:
        super().__post_init__()
        _finite(self.observed, "alert.observed", low=None)
        _finite(self.threshold, "alert.threshold", low=None)


@dataclass(frozen=True)
class StatusRecord(_RecordBase):
    """A rollout's state as canary-guard holds it: phase, step percent, rule streaks, last verdict."""

    record: ClassVar[str] = "status"
    at: datetime
    service: str
    phase: str
    percent: int
    streaks: dict[str, str] = field(default_factory=dict)  # rule → "2/3" (run / limit)
    verdict: str | None = None


Record = MinuteRecord | TrafficRecord | DecisionRecord | AlertRecord | StatusRecord
RECORD_TYPES: dict[str, type[Record]] = {
    cls.record: cls for cls in (MinuteRecord, TrafficRecord, DecisionRecord, AlertRecord, StatusRecord)
}


def record_from_json(line: str) -> Record:
    """Any record from its JSON line, by its `record` type."""
    data = _json_object(line)
    record_type = RECORD_TYPES.get(data.get("record"))  # type: ignore[arg-type]
    if record_type is None:
        raise TimelineError(f"unknown record type {data.get('record')!r} (known: {sorted(RECORD_TYPES)})")
    return record_type.from_dict(data)


class TimelineWriter:
    """Appends records to a JSON-lines file, one flushed line each; safe to share between threads."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._file: TextIO | None = self.path.open("a", encoding="utf-8")

    def write(self, record: Record) -> None:
        line = record.to_json() + "\n"  # serialised outside the lock: a bad record writes nothing
        with self._lock:
            if self._file is None:
                raise ValueError(f"timeline {self.path} is closed")
            # One write() per line, then flush: a crash loses at most the line being written.
            self._file.write(line)
            self._file.flush()

    def write_all(self, records: Iterable[Record]) -> None:
        for record in records:
            self.write(record)

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def read_timeline(path: str | Path, *, skip_torn_tail: bool = True) -> list[Record]:
    """Every record of a timeline file, in file order.

    A malformed line raises TimelineError naming the file and line. The one exception, with
    `skip_torn_tail`, is an unparseable LAST line without its newline: that is a write cut short
    by a crash, and everything before it is still a complete report's worth.
    """
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")
    records: list[Record] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append(record_from_json(line))
        except TimelineError as exc:
            torn_tail = number == len(lines) and not text.endswith("\n")
            if skip_torn_tail and torn_tail:
                break
            raise TimelineError(f"{path}:{number}: {exc}") from None
    return records


# ---- reading a timeline: what the view and the report share -------------------------------------


@dataclass
class ServiceTimeline:
    """One service's records, each list in timeline order."""

    service: str
    minutes: list[MinuteRecord] = field(default_factory=list)
    traffic: list[TrafficRecord] = field(default_factory=list)
    decisions: list[DecisionRecord] = field(default_factory=list)
    alerts: list[AlertRecord] = field(default_factory=list)
    statuses: list[StatusRecord] = field(default_factory=list)

    @property
    def short_name(self) -> str:
        return service_short_name(self.service)

    def revisions(self) -> list[str]:
        """Revisions in minutes or splits: stable first, then canary, then others, each by first sight."""
        order: dict[str, int] = {}
        rank = {"stable": 0, "canary": 1, "other": 2}
        for minute in self.minutes:
            order.setdefault(minute.revision, rank[minute.role])
        for change in self.traffic:
            for revision in change.split:
                order.setdefault(revision, 2)
        seen = list(order)
        return sorted(seen, key=lambda revision: (order[revision], seen.index(revision)))

    def role_of(self, revision: str) -> str | None:
        """The revision's role in its latest minute (roles change when a canary is promoted)."""
        for minute in reversed(self.minutes):
            if minute.revision == revision:
                return minute.role
        return None


def service_short_name(service: str) -> str:
    """`shop` for `projects/p/locations/l/services/shop`."""
    return service.rstrip("/").rsplit("/", 1)[-1]


def group_by_service(records: Iterable[Record]) -> dict[str, ServiceTimeline]:
    """Records per service, services in order of first appearance; each list sorted by time (stable)."""
    grouped: dict[str, ServiceTimeline] = {}
    for record in records:
        timeline = grouped.setdefault(record.service, ServiceTimeline(record.service))
        bucket: list[Any] = {
            "minute": timeline.minutes,
            "traffic": timeline.traffic,
            "decision": timeline.decisions,
            "alert": timeline.alerts,
            "status": timeline.statuses,
        }[record.record]
        bucket.append(record)
    for timeline in grouped.values():
        for bucket in (timeline.minutes, timeline.traffic, timeline.decisions, timeline.alerts):
            bucket.sort(key=lambda record: record.at)
        timeline.statuses.sort(key=lambda record: record.at)
    return grouped


# Metric name (as in MinuteRecord and the policy's rules) → how a value reads.
_PERCENT_METRICS = frozenset({"error_rate", "memory", "cpu"})


def metric_text(metric: str, value: float | None) -> str:
    """`6.00 %` for a ratio, `512 ms` for latency_p95, the number otherwise; `-` for no value."""
    if value is None:
        return "-"
    if metric in _PERCENT_METRICS:
        return f"{value * 100:.2f} %"
    if metric in ("latency_p95", "p95_ms"):
        return f"{value:.0f} ms"
    return f"{value:g}"


def alert_text(alert: AlertRecord) -> str:
    """`error_rate open on shop-00002 (6.00 % vs bar 1.00 %)`."""
    measured = ""
    if alert.observed is not None or alert.threshold is not None:
        measured = (
            f" ({metric_text(alert.rule, alert.observed)} vs bar {metric_text(alert.rule, alert.threshold)})"
        )
    if not alert.revision:  # the uptime check's incident names the canary's URL, not a revision
        regions = "" if alert.observed is None else f" ({alert.observed:g} checker regions failing)"
        return f"{alert.rule} {alert.state} on the canary tag URL{regions}"
    return f"{alert.rule} {alert.state} on {alert.revision}{measured}"


@dataclass(frozen=True)
class MetricBars:
    """The policy's bars per minute metric: rollback (breach when over) and GO (advance when at or under).

    Keys are the rule names: error_rate and memory as fractions, latency_p95 in ms, cpu (GO only).
    """

    rollback: Mapping[str, float]
    go: Mapping[str, float]
    min_requests_per_minute: int  # under it error_rate and latency_p95 are not judged (thin minute)

    @classmethod
    def from_policy(cls, policy: Policy) -> MetricBars:
        rules = policy.rollback_rules
        return cls(
            rollback={name: rules[name].threshold for name in ("error_rate", "latency_p95", "memory")},
            go={
                "error_rate": policy.go_bars.error_rate,
                "latency_p95": policy.go_bars.latency_p95,
                "memory": policy.go_bars.memory,
                "cpu": policy.go_bars.cpu,
            },
            min_requests_per_minute=policy.evidence.min_requests_per_minute,
        )

    def level(self, metric: str, value: float | None, requests: int | None = None) -> str:
        """`rollback` over the rollback bar, `go` over only the GO bar, `ok` under, `thin` unjudged."""
        if value is None:
            return "ok"
        judged_on_requests = metric in ("error_rate", "latency_p95") and requests is not None
        if judged_on_requests and requests < self.min_requests_per_minute:
            return "thin"
        if metric in self.rollback and value > self.rollback[metric]:
            return "rollback"
        if metric in self.go and value > self.go[metric]:
            return "go"
        return "ok"


def split_text(split: Mapping[str, int]) -> str:
    """`shop-00001 95%, shop-00002 5%`, biggest share first (stable reads first)."""
    ordered = sorted(split.items(), key=lambda item: (-item[1], item[0]))
    return ", ".join(f"{revision} {percent}%" for revision, percent in ordered) or "-"


def clock_text(at: datetime, *, seconds: bool = True) -> str:
    return at.astimezone(UTC).strftime("%H:%M:%SZ" if seconds else "%H:%MZ")
