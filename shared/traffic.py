"""Cloud Run traffic as plain values, and the pure plans that change it.

No I/O here: shared/cloudrun.py reads and writes traffic with the official client, and hands
these values to the plans below inside its read-modify-write loop.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

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
    others = {rev: share for rev, share in shares.items() if rev != canary}
    if not others:
        return None  # the canary already serves everything: nothing is "stable" any more
    stable = max(others, key=lambda rev: others[rev])
    return CanarySplit(canary, stable, shares[canary])


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
