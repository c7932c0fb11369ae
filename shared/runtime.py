"""Per-process singletons for the entry points, built on first use.

A warm function instance reuses its clients; each entry point touches only the clients it
needs, so a cold start imports nothing else (the imports are inside the builders).
"""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING

from shared.config import Settings, load_settings
from shared.policy import Policy, cached_policy

if TYPE_CHECKING:
    from shared.cloudrun import CloudRunTraffic
    from shared.pubsub import Publisher
    from shared.store import RolloutStore


@cache
def settings() -> Settings:
    return load_settings()


def policy() -> Policy:
    return cached_policy(str(settings().policy_file))


@cache
def store() -> RolloutStore:
    from shared.store import RolloutStore

    return RolloutStore(settings().project)


@cache
def traffic() -> CloudRunTraffic:
    from shared.cloudrun import CloudRunTraffic

    return CloudRunTraffic(settings().cloud_run_endpoint)


@cache
def publisher() -> Publisher:
    from shared.pubsub import Publisher

    return Publisher(settings().project)
