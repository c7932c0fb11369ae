"""Cloud Run traffic as plain values, and the pure plans that change it.

No I/O here: shared/clients/cloudrun.py reads and writes traffic with the official client, and hands
these values to the plans below inside its read-modify-write loop.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from shared.core.lifecycle import Phase

CANARY_TAG = "canary"
STABLE_TAG = "stable"


@dataclass(frozen=True)
class TrafficSplit:
    revision: str  # short revision name
    percent: int
    tag: str = ""


@dataclass(frozen=True)
class ServiceTraffic:
    service: str  # projects/P/locations/L/services/S
    targets: tuple[TrafficSplit, ...]
    etag: str = ""
    latest_ready_revision: str = ""
    tag_uris: dict[str, str] = field(default_factory=dict)
    uri: str = ""

    def percent_of(self, revision: str) -> int:
        return sum(t.percent for t in self.targets if t.revision == revision)

    def as_dicts(self) -> list[dict[str, Any]]:
        return targets_as_dicts(self.targets)


def targets_as_dicts(targets: Sequence[TrafficSplit]) -> list[dict[str, Any]]:
    """JSON-friendly targets, for logs, responses and the decision history."""
    return [{"revision": t.revision, "percent": t.percent, "tag": t.tag} for t in targets]


class TrafficPlanError(ValueError):
    """The live traffic does not allow the requested change (e.g. no stable revision)."""


@dataclass(frozen=True)
class CanarySplit:
    canary_revision: str
    stable_revision: str
    canary_percent: int


def shares_by_revision(targets: Sequence[TrafficSplit]) -> dict[str, int]:
    """Percent per revision with traffic (Cloud Run may list one revision in several entries)."""
    shares: dict[str, int] = {}
    for t in targets:
        shares[t.revision] = shares.get(t.revision, 0) + t.percent
    return {rev: share for rev, share in shares.items() if share}


def _tags(targets: Sequence[TrafficSplit]) -> dict[str, str]:
    """Tag → revision (a tag names exactly one revision; a revision may have several tags)."""
    return {t.tag: t.revision for t in targets if t.tag}


def discover_canary(traffic: ServiceTraffic) -> CanarySplit | None:
    """The canary is the revision tagged `canary` with a non-zero share; stable holds the rest.

    None when there is no live canary (no tag, or the tagged revision gets no traffic).
    """
    canary = _tags(traffic.targets).get(CANARY_TAG)
    shares = shares_by_revision(traffic.targets)
    if canary is None or canary not in shares:
        return None
    stable, _tied = stable_beside(traffic, canary)
    if stable is None:
        return None  # the canary already serves everything: nothing is "stable" any more
    return CanarySplit(canary, stable, shares[canary])


def stable_beside(traffic: ServiceTraffic, canary_revision: str) -> tuple[str | None, list[str]]:
    """The stable revision beside a canary: the other revision with the largest share (None
    when no other serves), and every revision tied for that share (more than one: ambiguous,
    which `start` refuses and a discovered canary resolves by name order)."""
    others = {
        rev: share for rev, share in shares_by_revision(traffic.targets).items() if rev != canary_revision
    }
    if not others:
        return None, []
    top = max(others.values())
    tied = sorted(rev for rev, share in others.items() if share == top)
    return tied[0], tied


def _same_split(current: ServiceTraffic, wanted: Sequence[TrafficSplit]) -> bool:
    return shares_by_revision(current.targets) == shares_by_revision(wanted) and _tags(
        current.targets
    ) == _tags(wanted)


def _split(current: ServiceTraffic, shares: dict[str, int], move_tags: dict[str, str]) -> list[TrafficSplit]:
    """Targets with the given shares. Every tag stays (tagged revisions stay reachable at 0 %),
    `move_tags` moves a tag to another revision; untagged revisions without a share drop out."""
    tags = _tags(current.targets) | {tag: rev for rev, tag in move_tags.items()}
    revisions = dict.fromkeys([*shares, *tags.values(), *(t.revision for t in current.targets)])
    targets: list[TrafficSplit] = []
    for rev in revisions:
        rev_tags = [tag for tag, tagged in tags.items() if tagged == rev] or [""]
        # The share rides on the first entry; further tags of the revision get 0 % entries.
        targets.append(TrafficSplit(rev, shares.get(rev, 0), rev_tags[0]))
        targets.extend(TrafficSplit(rev, 0, tag) for tag in rev_tags[1:])
    return [t for t in targets if t.percent > 0 or t.tag]


def plan_rollback(
    current: ServiceTraffic, stable_revision: str | None, only_revision: str | None = None
) -> list[TrafficSplit] | None:
    """Stable gets 100 %; every other revision 0 %, keeping its tag so the canary stays reachable.

    With `only_revision` (a rollback aimed at one canary) only that revision's share moves to
    stable: a newer canary that appeared meanwhile keeps its own. Without a known stable
    revision it is inferred from the live split. None: already there.
    """
    stable = stable_revision
    if not stable:
        split = discover_canary(current)
        if split is None:
            raise TrafficPlanError(f"{current.service} has no live canary and no known stable revision")
        stable = split.stable_revision
    if only_revision is None:
        shares = {stable: 100}
    else:
        shares = shares_by_revision(current.targets)
        moved = shares.pop(only_revision, 0)
        shares[stable] = shares.get(stable, 0) + moved
    wanted = _split(current, shares, {})
    return None if _same_split(current, wanted) else wanted


def plan_canary_share(
    current: ServiceTraffic, canary_revision: str, stable_revision: str, percent: int
) -> list[TrafficSplit] | None:
    """Canary (tagged `canary`) gets `percent`, stable the rest. None: already there.

    At 100 % the previous stable revision is tagged `stable` (0 %): during the watch after
    promotion a rollback puts it back in one write, and its tag URL stays reachable."""
    if not 0 <= percent <= 100:
        raise TrafficPlanError(f"canary percent must be 0..100, got {percent}")
    shares = {canary_revision: percent, stable_revision: 100 - percent}
    tags = {canary_revision: CANARY_TAG}
    if percent == 100 and stable_revision != canary_revision:
        tags[stable_revision] = STABLE_TAG
    wanted = _split(current, {rev: share for rev, share in shares.items() if share}, tags)
    return None if _same_split(current, wanted) else wanted


# --- What a rollback request does: decided here, carried out by shared/handlers/rollback.py -


class RollbackStep(StrEnum):
    NO_CANARY = "no_canary"  # nothing to roll back: no rollout found for the request
    SUPERSEDED = "superseded"  # its canary was replaced by a newer one, which it must not touch
    CANARY_GONE = "canary_gone"  # the named canary serves nothing: mark it done, move no traffic
    DRY_RUN = "dry_run"  # say what would change, change nothing
    ALREADY_ROLLED_BACK = "already_rolled_back"  # rolled back and already on stable
    ROLL_BACK = "roll_back"  # mark ROLLING_BACK, write `plan`'s split, mark ROLLED_BACK


@dataclass(frozen=True)
class RollbackDecision:
    step: RollbackStep
    message: str
    only_revision: str | None = None  # move only this canary's share (a request naming it)
    after: tuple[TrafficSplit, ...] | None = None  # the split it leads to (dry run: would)


def decide_rollback(
    current: ServiceTraffic,
    *,
    service: str,
    phase: Phase | None,
    canary_revision: str,
    stable_revision: str,
    named: bool,
    dry_run: bool,
) -> RollbackDecision:
    """What a rollback request does to the live split `current` of `service` (short name):
    `phase` / revisions are those of the rollout it is about (None: no rollout found), `named`
    whether the request named that canary (a request from breach_counter or a checkpoint does;
    an operator's names the service only)."""
    if phase is None:
        return RollbackDecision(
            RollbackStep.NO_CANARY,
            f"{service} has no canary to roll back (no revision tagged 'canary' with traffic)",
        )
    # A request aimed at one canary moves only that canary's share (a newer canary keeps its own).
    only = canary_revision if named else None
    if phase is Phase.SUPERSEDED and not (only and current.percent_of(only)):
        return RollbackDecision(
            RollbackStep.SUPERSEDED,
            f"canary {canary_revision} was superseded by a newer canary; nothing rolled back",
        )
    if named and current.percent_of(canary_revision) == 0:
        # A redelivered or stale request: never touch the traffic, which may belong to a newer
        # canary by now. A half-finished rollback is done.
        return RollbackDecision(
            RollbackStep.CANARY_GONE, f"canary {canary_revision} of {service} already serves no traffic"
        )
    plan = plan_rollback(current, stable_revision, only)
    if dry_run:
        verb = "would move" if plan is not None else "would not change:"
        return RollbackDecision(
            RollbackStep.DRY_RUN,
            f"dry run: {verb} {service} to {stable_revision} at 100%",
            only,
            tuple(plan) if plan is not None else current.targets,
        )
    if plan is None and phase is Phase.ROLLED_BACK:
        return RollbackDecision(
            RollbackStep.ALREADY_ROLLED_BACK, f"{service} is already rolled back to {stable_revision}"
        )
    return RollbackDecision(
        RollbackStep.ROLL_BACK,
        f"rolled back {service}: {stable_revision} 100%, canary {canary_revision} 0%",
        only,
        tuple(plan) if plan is not None else current.targets,
    )
