"""What the team's chat channel is told, and how it reads: pure, no I/O.

A decision that the team should see (a start, a step, a freeze, a rollback requested, done or
failed, a failed load test...) becomes a `Notification` in the same Firestore write as its
decision record (shared/clients/store.py); it is published to Pub/Sub after that write commits and the
`notify` function renders it here and posts it to the chat webhook (shared/handlers/notify.py).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

ChatFormat = Literal["slack", "google_chat"]
CHAT_FORMATS: tuple[ChatFormat, ...] = ("slack", "google_chat")

# Decision kinds the channel hears about (shared/clients/store.py writes them), and how loud each is.
_LEVEL: dict[str, str] = {
    "started": "info",
    "step": "info",
    "promoted": "good",
    "paused": "info",
    "resumed": "info",
    "unfrozen": "info",
    "superseded": "info",
    "frozen": "warning",
    "rollback_requested": "danger",
    "rolled_back": "danger",
    "rollback_failed": "danger",
    "rollback_redriven": "warning",
    "load_test": "warning",
    "checkpoint": "info",
}
_ICON = {"info": "ℹ️", "good": "✅", "warning": "⚠️", "danger": "🚨"}
_SLACK_COLOUR = {"info": "#439FE0", "good": "good", "warning": "warning", "danger": "danger"}


def checkpoint_is_news(action: str, verdict: str, previous_verdict: str | None) -> bool:
    """Whether a checkpoint's record asks for a message (its `notify` field): a hold is told when
    its verdict changed, not every minute; steps, freezes and rollbacks have their own records."""
    return action == "hold" and verdict != previous_verdict


def should_notify(kind: str, data: Mapping[str, Any]) -> bool:
    """Whether a decision of `kind` with `data` is worth a chat message. Every start, step,
    freeze and rollback is; a load test only when it failed; a checkpoint only when its
    verdict asked for it (a HOLD whose verdict changed); evidence, dry runs and a rollback's
    start (its end follows within seconds) never."""
    if kind == "load_test":
        return str(data.get("verdict", "")).upper() == "FAIL"
    if kind == "checkpoint":
        return bool(data.get("notify"))
    return kind in _LEVEL


@dataclass(frozen=True)
class Notification:
    """One message for the channel: the decision record it comes from, as written."""

    id: str  # the decision record's id: one notification per decision, however often sent
    rollout: str
    kind: str
    at: str  # RFC 3339
    data: Mapping[str, Any] = field(default_factory=dict)

    def as_message(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "rollout": self.rollout,
            "kind": self.kind,
            "at": self.at,
            "data": dict(self.data),
        }

    @classmethod
    def from_message(cls, body: Any) -> Notification:
        if not isinstance(body, Mapping):
            raise ValueError("a notification must be a JSON object")
        required = ("id", "rollout", "kind", "at")
        missing = [k for k in required if not isinstance(body.get(k), str) or not body[k]]
        if missing:
            raise ValueError(f"a notification needs the string field(s) {missing}")
        data = body.get("data")
        data = {} if data is None else data
        if not isinstance(data, Mapping):
            raise ValueError("a notification's data must be an object")
        return cls(body["id"], body["rollout"], body["kind"], body["at"], dict(data))


@dataclass(frozen=True)
class Context:
    """What the notify function knows of the rollout when it renders (read from Firestore)."""

    service: str = ""  # full name projects/P/locations/L/services/S, "" if unknown
    canary_revision: str = ""
    stable_revision: str = ""
    dashboard_url: str = ""


def _short(service: str) -> str:
    return service.rsplit("/", 1)[-1] if service else "?"


def _split(targets: Any) -> str:
    """[{"revision": r, "percent": p, ...}] -> 'r 95%, r2 5%' (largest first)."""
    if not isinstance(targets, Sequence) or isinstance(targets, str):
        return ""
    parts = [
        (int(t.get("percent") or 0), str(t.get("revision") or t.get("tag") or "latest"))
        for t in targets
        if isinstance(t, Mapping) and t.get("percent")
    ]
    return ", ".join(f"{rev} {pct}%" for pct, rev in sorted(parts, reverse=True))


def headline(note: Notification, ctx: Context) -> str:
    """One line that says what happened to which canary, and why."""
    d, svc, canary = note.data, _short(ctx.service), ctx.canary_revision or "the canary"
    pct = d.get("canary_percent", "?")
    why = str(d.get("message") or d.get("reason") or "")
    by = d.get("by") or d.get("requested_by") or d.get("started_by")
    kind = note.kind
    if kind == "started":
        text = f"{svc}: canary {canary} started at {pct}% (stable {ctx.stable_revision})"
    elif kind == "step":
        text = f"{svc}: canary {canary} {d.get('from_percent')}% → {d.get('to_percent')}% ({why})"
    elif kind == "promoted":
        text = f"{svc}: canary {canary} promoted to 100% ({why})"
    elif kind == "frozen":
        text = f"{svc}: canary {canary} FROZEN at {pct}%: {why}. Breaches still roll it back"
    elif kind == "rollback_requested":
        text = f"{svc}: rolling back canary {canary}: {why}"
    elif kind == "rolled_back":
        mode = d.get("mode") or "auto"
        cause = d.get("reason") or why
        text = f"{svc}: ROLLED BACK canary {canary} ({mode}): {cause}"
    elif kind == "rollback_failed":
        text = f"{svc}: rollback of canary {canary} FAILED: {why}"
    elif kind == "rollback_redriven":
        text = f"{svc}: rollback of canary {canary} not finished; request re-sent"
    elif kind == "load_test":
        result = why.removeprefix(f"{svc}: ").removeprefix("load test ")  # the message names both
        text = f"{svc}: load test of canary {canary}: {result}"
    elif kind == "checkpoint":
        reasons = "; ".join(str(r) for r in d.get("reasons") or []) or why
        text = f"{svc}: canary {canary} holds at {pct}%: {d.get('verdict', '?')} ({reasons})"
    else:
        text = f"{svc}: {kind.replace('_', ' ')} ({canary}): {why}"
    if by and kind not in ("rollback_requested",):
        text += f" — by {by}"
    return text


def details(note: Notification, ctx: Context) -> list[tuple[str, str]]:
    """(title, value) rows: the rule, the observed values against the bars and over which
    minutes, the traffic before and after, and who decided."""
    d = note.data
    rows: list[tuple[str, str]] = []
    if d.get("rule"):
        rows.append(("Rule", str(d["rule"])))
    evidence = d.get("evidence")
    if isinstance(evidence, Sequence) and not isinstance(evidence, str) and evidence:
        rows.append(("Observed", "\n".join(str(e) for e in evidence[:6])))
    observations = d.get("observations")
    if not evidence and isinstance(observations, Sequence) and observations:
        described = [
            str(o["describe"]) for o in observations[:6] if isinstance(o, Mapping) and o.get("describe")
        ]
        if described:
            rows.append(("Observed", "\n".join(described)))
    if isinstance(d.get("minutes"), Sequence) and d.get("minutes"):
        minutes = list(d["minutes"])
        rows.append(("Minutes", f"{minutes[0]} – {minutes[-1]}" if len(minutes) > 1 else str(minutes[0])))
    if d.get("before"):
        rows.append(("Traffic before", _split(d["before"])))
    if d.get("after"):
        rows.append(("Traffic after", _split(d["after"])))
    rows.append(("Rollout", note.rollout))
    return [(title, value) for title, value in rows if value]


def links(ctx: Context) -> list[tuple[str, str]]:
    """(label, url): the canary revision in the Cloud console, the dashboard."""
    out = []
    parts = ctx.service.split("/")
    if len(parts) == 6 and ctx.canary_revision:
        project, location, service = parts[1], parts[3], parts[5]
        out.append(
            (
                f"Revision {ctx.canary_revision}",
                f"https://console.cloud.google.com/run/detail/{location}/{service}/revisions"
                f"?project={project}",
            )
        )
    if ctx.dashboard_url:
        out.append(("Dashboard", ctx.dashboard_url))
    return out


def render(note: Notification, ctx: Context, fmt: ChatFormat) -> dict[str, Any]:
    """The webhook body: Slack incoming-webhook attachments, or a Google Chat card."""
    level = _LEVEL.get(note.kind, "info")
    text = f"{_ICON[level]} canary-guard: {headline(note, ctx)}"
    rows = details(note, ctx)
    urls = links(ctx)
    if fmt == "google_chat":
        widgets: list[dict[str, Any]] = [
            {"decoratedText": {"topLabel": title, "text": value.replace("\n", "<br>"), "wrapText": True}}
            for title, value in rows
        ]
        if urls:
            widgets.append(
                {
                    "buttonList": {
                        "buttons": [
                            {"text": label, "onClick": {"openLink": {"url": url}}} for label, url in urls
                        ]
                    }
                }
            )
        return {
            "text": text,
            "cardsV2": [{"cardId": note.id[:60], "card": {"sections": [{"widgets": widgets}]}}],
        }
    fields = [{"title": title, "value": value, "short": len(value) < 40} for title, value in rows]
    fields += [{"title": label, "value": f"<{url}|open>", "short": True} for label, url in urls]
    return {
        "text": text,
        "attachments": [{"color": _SLACK_COLOUR[level], "fields": fields, "ts": _epoch(note.at)}],
    }


def plain_text(note: Notification, ctx: Context) -> str:
    """The message as the channel shows it, in text (logs, tests, the closing note)."""
    lines = [f"canary-guard: {headline(note, ctx)}"]
    lines += [f"  {title}: {value}" for title, value in details(note, ctx)]
    lines += [f"  {label}: {url}" for label, url in links(ctx)]
    return "\n".join(lines)


def _epoch(at: str) -> int:
    try:
        return int(datetime.fromisoformat(at.replace("Z", "+00:00")).timestamp())
    except ValueError:
        return 0
