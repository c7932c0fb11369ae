"""The record of a rehearsal: what was served, measured, alerted and decided, minute by minute.

A timeline is a JSON-lines file, one record per line, appended as things happen (each line is
flushed at once), so a run that crashes half way still leaves everything up to the crash for the
report. Every line carries `"record"` (minute, traffic, decision, alert, status) naming its type;
`DecisionRecord.kind` is canary-guard's decision kind (started, evidence, rolled_back, ...).

How the live view and the report read a timeline (per service, values as text) is
infra/rehearsal/service_timeline.py.
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
