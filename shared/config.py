"""Configuration from environment variables, validated at start.

The variable names are a contract with Terraform (terraform/functions.tf sets them) and the
local stack. `ENV_BY_FUNCTION` says which variables each entry point reads, so the offline
Terraform checks can prove every function gets what it needs.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from shared.core.notifications import CHAT_FORMATS
from shared.policy import DEFAULT_POLICY_FILE

SERVICE_NAME_RE = re.compile(r"^projects/([a-z0-9-]+)/locations/([a-z0-9-]+)/services/([a-z0-9-]+)$")

# Variable -> default (None: required). Documented in the README's configuration table.
ENV_DEFAULTS: dict[str, str | None] = {
    "GOOGLE_CLOUD_PROJECT": None,
    "CANARY_SERVICES": None,
    "ROLLBACK_TOPIC": "canary-rollback-requests",
    "CANARY_POLICY_FILE": str(DEFAULT_POLICY_FILE),
    "CLOUD_RUN_API_ENDPOINT": "",
    "MONITORING_API_ENDPOINT": "",
    # Decisions the chat channel should hear of are published here (empty: no notifications);
    # the notify function, pushed this topic, posts them to CHAT_WEBHOOK_URL in CHAT_FORMAT.
    "NOTIFY_TOPIC": "",
    "CHAT_WEBHOOK_URL": "",
    "CHAT_FORMAT": "slack",  # slack (incoming webhook) or google_chat
    "DASHBOARD_URL": "",  # linked from each message
    "FUNCTION_TIMEOUT_S": "540",
    "FUNCTION_MEMORY_MB": "512",
    "LOAD_TEST_AUTH": "none",  # "id_token": call the target with the function's identity token
    # Days a decision record is kept (Firestore TTL on expires_at); 0: kept for ever.
    "DECISION_RETENTION_DAYS": "0",
    # Set: the scheduled checkpoint reads Monitoring once and publishes one message per watched
    # service here; checkpoint_worker instances (pushed this topic) judge them in parallel.
    # Empty: the checkpoint judges every service itself.
    "CHECKPOINT_TOPIC": "",
}

_COMMON = (
    "GOOGLE_CLOUD_PROJECT",
    "CANARY_SERVICES",
    "CANARY_POLICY_FILE",
    "CLOUD_RUN_API_ENDPOINT",
    "DECISION_RETENTION_DAYS",
)
ENV_BY_FUNCTION: dict[str, tuple[str, ...]] = {
    "breach_counter": (*_COMMON, "ROLLBACK_TOPIC", "MONITORING_API_ENDPOINT", "NOTIFY_TOPIC"),
    "rollback": (*_COMMON, "NOTIFY_TOPIC"),
    "emergency_rollback": (*_COMMON, "NOTIFY_TOPIC"),
    "checkpoint": (
        *_COMMON,
        "ROLLBACK_TOPIC",
        "MONITORING_API_ENDPOINT",
        "NOTIFY_TOPIC",
        "CHECKPOINT_TOPIC",
        "FUNCTION_TIMEOUT_S",
    ),
    "checkpoint_worker": (
        *_COMMON,
        "ROLLBACK_TOPIC",
        "MONITORING_API_ENDPOINT",
        "NOTIFY_TOPIC",
        "FUNCTION_TIMEOUT_S",
    ),
    "load_test": (
        *_COMMON,
        "MONITORING_API_ENDPOINT",
        "FUNCTION_TIMEOUT_S",
        "FUNCTION_MEMORY_MB",
        "LOAD_TEST_AUTH",
        "NOTIFY_TOPIC",
    ),
    "notify": (*_COMMON, "CHAT_WEBHOOK_URL", "CHAT_FORMAT", "DASHBOARD_URL"),
}


class ConfigError(ValueError):
    """An environment variable is missing or malformed; the message names it."""


@dataclass(frozen=True)
class ServiceRef:
    """A Cloud Run service by its parts; `name` is the full resource name."""

    project: str
    location: str
    service: str

    @property
    def name(self) -> str:
        return f"projects/{self.project}/locations/{self.location}/services/{self.service}"

    @classmethod
    def parse(cls, name: str) -> ServiceRef:
        match = SERVICE_NAME_RE.match(name.strip())
        if not match:
            raise ValueError(f"{name!r} is not a service name like projects/P/locations/L/services/S")
        return cls(*match.groups())


@dataclass(frozen=True)
class Settings:
    project: str
    services: tuple[ServiceRef, ...]
    rollback_topic: str
    policy_file: Path
    cloud_run_endpoint: str | None
    monitoring_endpoint: str | None
    chat_webhook_url: str | None
    function_timeout_s: float
    function_memory_mb: int
    load_test_auth: str = "none"
    decision_retention_days: int = 0  # 0: decision records are kept for ever
    notify_topic: str | None = None  # None: decisions notify nobody
    chat_format: str = "slack"
    dashboard_url: str = ""
    checkpoint_topic: str | None = None  # None: the checkpoint judges every service itself

    def resolve_service(self, name: str) -> ServiceRef:
        """A full service name or a short name that is unambiguous among the watched services.

        Raises LookupError when the service is not watched (callers answer 403 / acknowledge),
        ValueError when a short name matches more than one watched service.
        """
        name = name.strip()
        if name.startswith("projects/"):
            ref = ServiceRef.parse(name)
            if ref not in self.services:
                raise LookupError(f"service {name} is not in CANARY_SERVICES")
            return ref
        matches = [ref for ref in self.services if ref.service == name]
        if not matches:
            raise LookupError(f"service {name!r} is not in CANARY_SERVICES")
        if len(matches) > 1:
            raise ValueError(f"service {name!r} is ambiguous: {', '.join(m.name for m in matches)}")
        return matches[0]


def _read(env: Mapping[str, str], name: str) -> str:
    value = env.get(name, "").strip()
    if value:
        return value
    default = ENV_DEFAULTS[name]
    if default is None:
        raise ConfigError(f"environment variable {name} is required but not set")
    return default


def _number(env: Mapping[str, str], name: str) -> float:
    raw = _read(env, name)
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"environment variable {name}={raw!r} is not a number") from None
    if not math.isfinite(value):
        raise ConfigError(f"environment variable {name}={raw!r} is not a finite number")
    if value <= 0:
        raise ConfigError(f"environment variable {name}={raw!r} must be positive")
    return value


def _whole_number(env: Mapping[str, str], name: str) -> int:
    value = _number(env, name)
    if not value.is_integer():
        raise ConfigError(f"environment variable {name}={_read(env, name)!r} must be a whole number")
    return int(value)


def _days(env: Mapping[str, str], name: str) -> int:
    raw = _read(env, name)
    if not re.fullmatch(r"\d{1,5}", raw):
        raise ConfigError(f"environment variable {name}={raw!r} must be a whole number of days (0: for ever)")
    return int(raw)


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    env = os.environ if env is None else env
    services: list[ServiceRef] = []
    for item in _read(env, "CANARY_SERVICES").split(","):
        if not item.strip():
            continue
        try:
            services.append(ServiceRef.parse(item))
        except ValueError as exc:
            raise ConfigError(f"environment variable CANARY_SERVICES: {exc}") from None
    if not services:
        raise ConfigError("environment variable CANARY_SERVICES lists no service")
    policy_file = Path(_read(env, "CANARY_POLICY_FILE"))
    if not policy_file.is_file():
        raise ConfigError(f"environment variable CANARY_POLICY_FILE={policy_file}: no such file")
    chat_format = _read(env, "CHAT_FORMAT")
    if chat_format not in CHAT_FORMATS:
        raise ConfigError(
            f"environment variable CHAT_FORMAT={chat_format!r} must be one of {', '.join(CHAT_FORMATS)}"
        )
    load_test_auth = _read(env, "LOAD_TEST_AUTH")
    if load_test_auth not in ("none", "id_token"):
        raise ConfigError(f"environment variable LOAD_TEST_AUTH={load_test_auth!r} must be none or id_token")
    return Settings(
        load_test_auth=load_test_auth,
        project=_read(env, "GOOGLE_CLOUD_PROJECT"),
        services=tuple(dict.fromkeys(services)),
        rollback_topic=_read(env, "ROLLBACK_TOPIC"),
        policy_file=policy_file,
        cloud_run_endpoint=_read(env, "CLOUD_RUN_API_ENDPOINT") or None,
        monitoring_endpoint=_read(env, "MONITORING_API_ENDPOINT") or None,
        chat_webhook_url=_read(env, "CHAT_WEBHOOK_URL") or None,
        notify_topic=_read(env, "NOTIFY_TOPIC") or None,
        chat_format=chat_format,
        dashboard_url=_read(env, "DASHBOARD_URL"),
        function_timeout_s=_number(env, "FUNCTION_TIMEOUT_S"),
        function_memory_mb=_whole_number(env, "FUNCTION_MEMORY_MB"),
        decision_retention_days=_days(env, "DECISION_RETENTION_DAYS"),
        checkpoint_topic=_read(env, "CHECKPOINT_TOPIC") or None,
    )
