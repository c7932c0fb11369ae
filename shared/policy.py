"""The policy file (thresholds, streak limits, ramp, schedules), validated on load.

`shared/policy.yaml` is the single source of truth; Terraform reads the same file with
yamldecode(), so field names here are part of the Terraform contract.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

DEFAULT_POLICY_FILE = Path(__file__).with_name("policy.yaml")

RuleName = Literal["error_rate", "latency_p95", "memory", "canary_down"]
RULE_NAMES: tuple[RuleName, ...] = ("error_rate", "latency_p95", "memory", "canary_down")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RollbackRule(_Strict):
    description: str
    threshold: float = Field(ge=0)
    consecutive: int = Field(ge=1, le=100)


class UptimeCheck(_Strict):
    path: str = Field(pattern=r"^/")
    period_s: Literal[60, 300, 600, 900]
    timeout_s: int = Field(ge=1, le=60)


class MetricCondition(_Strict):
    """How Cloud Monitoring measures one metric rule (Terraform builds its alert policy)."""

    title: str = Field(min_length=1, max_length=80)
    filter: str = Field(pattern=r'^metric\.type = "[a-z0-9_./-]+"')
    denominator_filter: str = Field(default="", pattern=r'^$|^metric\.type = "[a-z0-9_./-]+"')
    per_series_aligner: str = Field(pattern=r"^ALIGN_[A-Z0-9_]+$")
    cross_series_reducer: str = Field(pattern=r"^REDUCE_[A-Z0-9_]+$")


class Alerting(_Strict):
    alignment_period_s: int = Field(ge=60, multiple_of=60)
    duration_s: int = Field(ge=0, multiple_of=60)
    renotify_interval_s: int = Field(ge=60)
    auto_close_s: int = Field(ge=1800)
    uptime_check: UptimeCheck
    # Rule -> its Cloud Monitoring condition. Only Terraform reads these (the functions judge
    # minutes themselves); validated here so a typo fails the tests, not a plan.
    metric_conditions: dict[RuleName, MetricCondition] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _no_metric_canary_down(self) -> Alerting:
        if "canary_down" in self.metric_conditions:
            raise ValueError("alerting.metric_conditions: canary_down is observed by the uptime check")
        return self


class GoBars(_Strict):
    error_rate: float = Field(ge=0, le=1)
    latency_p95: float = Field(gt=0)
    memory: float = Field(gt=0, le=1)
    cpu: float = Field(gt=0, le=1)
    min_requests: int = Field(ge=0)
    error_rate_confidence: float = Field(default=0.95, ge=0.5, lt=1)


class JudgeAgainstStable(_Strict):
    enabled: bool = False
    error_rate_margin: float = Field(default=0.005, ge=0, le=1)
    latency_p95_margin_ratio: float = Field(default=0.2, ge=0)
    memory_margin: float = Field(default=0.05, ge=0, le=1)


class EvidenceRules(_Strict):
    min_requests_per_minute: int = Field(default=20, ge=1)
    down_error_rate: float = Field(default=0.5, gt=0, le=1)
    down_min_requests: int = Field(default=10, ge=1)
    lookback_minutes: int = Field(default=10, ge=2, le=60)
    settle_seconds: int = Field(default=0, ge=0, le=600)
    ledger_minutes: int = Field(default=120, ge=10, le=1440)
    judge_against_stable: JudgeAgainstStable = Field(default_factory=JudgeAgainstStable)


class RampStep(_Strict):
    percent: int = Field(gt=0, le=100)
    soak_minutes: int = Field(ge=0)


class Checkpoint(_Strict):
    schedule: str
    time_zone: str
    data_lag_minutes: int = Field(ge=0, le=30)
    progress_deadline_hours: int = Field(ge=1)
    watch_after_promotion_hours: float = Field(default=24, ge=0, le=720)


class LoadTest(_Strict):
    schedule: str
    time_zone: str
    mode: Literal["closed", "open"]
    requests: int = Field(ge=1, le=1_000_000)
    concurrency: int = Field(ge=1, le=1000)
    rate_per_s: float = Field(gt=0, le=10_000)
    duration_s: float = Field(gt=0, le=3000)
    request_timeout_s: float = Field(gt=0, le=60)
    method: Literal["GET", "HEAD", "POST"] = "GET"
    path: str = Field(pattern=r"^/")
    headers: dict[str, str] = Field(default_factory=dict)  # sent with every request (plus auth)
    max_error_rate: float = Field(ge=0, le=1)
    max_latency_p95: float = Field(gt=0)


class RateLimitProbe(_Strict):
    requests_per_side: int = Field(ge=1, le=1000)
    delay_ms: int = Field(ge=0, le=60_000)
    min_success_rate: float = Field(ge=0, le=1)


class Policy(_Strict):
    version: Literal[1]
    rollback_rules: dict[RuleName, RollbackRule]
    evidence: EvidenceRules = Field(default_factory=EvidenceRules)
    alerting: Alerting
    go_bars: GoBars
    ramp: list[RampStep] = Field(min_length=1)
    checkpoint: Checkpoint
    load_test: LoadTest
    rate_limit_probe: RateLimitProbe

    @property
    def consecutive_limits(self) -> dict[str, int]:
        """Each rollback rule's run limit: how many breach minutes in a row trip it."""
        return {rule: spec.consecutive for rule, spec in self.rollback_rules.items()}

    @model_validator(mode="after")
    def _consistent(self) -> Policy:
        missing = set(RULE_NAMES) - set(self.rollback_rules)
        if missing:
            raise ValueError(f"rollback_rules is missing {sorted(missing)}")
        percents = [step.percent for step in self.ramp]
        if percents != sorted(set(percents)):
            raise ValueError(f"ramp percents must strictly increase, got {percents}")
        if percents[-1] != 100:
            raise ValueError(f"the last ramp step must be 100 percent, got {percents[-1]}")
        deadline_minutes = self.checkpoint.progress_deadline_hours * 60
        for step in self.ramp:
            if step.soak_minutes >= deadline_minutes:
                raise ValueError(
                    f"ramp step {step.percent}% soaks {step.soak_minutes} min, not less than "
                    f"checkpoint.progress_deadline_hours ({deadline_minutes} min): it would always freeze"
                )
        limit = max(rule.consecutive for rule in self.rollback_rules.values())
        if self.evidence.ledger_minutes < self.evidence.lookback_minutes + limit:
            raise ValueError("evidence.ledger_minutes must hold lookback_minutes plus the longest run limit")
        # A GO bar looser than its rollback bar would let a breaching canary advance.
        for rule in ("error_rate", "latency_p95", "memory"):
            if getattr(self.go_bars, rule) > self.rollback_rules[rule].threshold:
                raise ValueError(f"go_bars.{rule} is looser than rollback_rules.{rule}.threshold")
        return self


class PolicyError(ValueError):
    """The policy file is missing, not YAML, or fails validation."""


def load_policy(path: str | Path = DEFAULT_POLICY_FILE) -> Policy:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise PolicyError(f"cannot read policy file {path}: {exc}") from exc
    except yaml.YAMLError as exc:
        raise PolicyError(f"policy file {path} is not valid YAML: {exc}") from exc
    try:
        return Policy.model_validate(raw)
    except ValidationError as exc:
        raise PolicyError(f"policy file {path} is invalid:\n{exc}") from exc


@lru_cache(maxsize=8)
def cached_policy(path: str) -> Policy:
    """Policy loaded once per process (warm function instances reuse it)."""
    return load_policy(path)
