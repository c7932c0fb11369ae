"""canary-guard operator CLI: the go-live checklist's hand-run steps as subcommands.

Only argument parsing and client construction live here, how answers are shown in
infra/cli_render.py; every rule (what may be started, advanced, paused or rolled back, and what
is healthy) is in shared/handlers/operations.py.
Clients come from the same environment variables as the functions (shared/runtime.py), and the
heavy Google libraries are imported only when a subcommand runs, so `--help` stays fast.

Run it: python -m infra.cli --help   (or `canary-guard` once the package is installed)
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click

from infra.cli_render import (
    before_after,
    history_text,
    load_test_text,
    metrics_text,
    status_detail,
    status_table,
)

if TYPE_CHECKING:
    from shared.handlers.operations import Operations

T = TypeVar("T")

EXIT_OK = 0
EXIT_REFUSED = 1  # shared.handlers.operations.OperationError
EXIT_CONFIG = 2  # same code as click's usage errors
EXIT_CONTROL_PLANE = 3  # Cloud Run / Firestore / Monitoring API failure
EXIT_UNHEALTHY = 4  # `status` only
# `status` exits EXIT_UNHEALTHY when any shown rollout is in one of these (the operations'
# health names); HEALTHY, PAUSED, PROMOTED and "no rollout" exit 0.
UNHEALTHY = frozenset({"DEGRADED", "ROLLING_BACK", "ROLLED_BACK", "FROZEN"})

MAIN_HELP = """Operate canary releases of the Cloud Run services in CANARY_SERVICES.

\b
Exit codes:
  0  success (status: every rollout shown is HEALTHY, PAUSED, PROMOTED or has none)
  1  the operation was refused; the reason is on stderr
  2  usage or configuration error (the wrong variable is named on stderr)
  3  a Cloud Run / Firestore / Monitoring API call failed; check `status`, then retry
  4  status only: a rollout is DEGRADED, ROLLING_BACK, ROLLED_BACK or FROZEN

\b
Configuration: the functions' environment variables: GOOGLE_CLOUD_PROJECT,
CANARY_SERVICES, CANARY_POLICY_FILE, CLOUD_RUN_API_ENDPOINT, MONITORING_API_ENDPOINT,
CHAT_WEBHOOK_URL; FIRESTORE_EMULATOR_HOST / PUBSUB_EMULATOR_HOST locally.
SERVICE is a full name (projects/P/locations/L/services/S) or an unambiguous short name.
"""


@dataclass
class _Options:
    json: bool
    operator: str


# --- running an operation --------------------------------------------------------------


def _fail(code: int, message: str) -> NoReturn:
    click.echo(message, err=True)
    sys.exit(code)


@contextlib.contextmanager
def _exit_codes() -> Iterator[None]:
    """Map the failures scripts care about to exit codes, with a short message on stderr."""
    from google.api_core import exceptions as gexc
    from google.auth.exceptions import DefaultCredentialsError

    from shared.clients.cloudrun import ControlPlaneError
    from shared.config import ConfigError
    from shared.handlers.operations import OperationError
    from shared.policy import PolicyError

    try:
        yield
    except OperationError as exc:
        _fail(EXIT_REFUSED, f"refused: {exc}")
    except (ConfigError, PolicyError) as exc:
        _fail(EXIT_CONFIG, f"configuration error: {exc}")
    except DefaultCredentialsError as exc:
        _fail(EXIT_CONFIG, f"configuration error: no Google credentials ({exc})")
    except (ControlPlaneError, gexc.GoogleAPICallError, gexc.RetryError) as exc:
        _fail(
            EXIT_CONTROL_PLANE,
            f"control-plane failure: {exc}\ncheck `status`, then run the command again",
        )


def _run(action: Callable[[Operations], T]) -> T:
    """Build the operations from the environment (as the functions do) and run `action`."""
    options = click.get_current_context().find_object(_Options)
    assert options is not None  # set by `main`
    # The shared clients log retries as JSON lines on stdout; keep stdout for the result only.
    with _exit_codes(), contextlib.redirect_stdout(sys.stderr):
        from shared import runtime
        from shared.handlers.checkpoint import runtime_clients
        from shared.handlers.operations import Operations

        settings, policy = runtime.settings(), runtime.policy()  # config errors before any call
        operations = Operations(settings, policy, runtime_clients(), operator=options.operator)
        return action(operations)


def _emit(data: Any, human: Callable[[Any], str]) -> None:
    options = click.get_current_context().find_object(_Options)
    assert options is not None
    click.echo(
        json.dumps(data, default=_json_value, indent=2, ensure_ascii=False) if options.json else human(data)
    )


def _json_value(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()
    return str(value)


# --- commands ----------------------------------------------------------------------------


def _json_flag(command: Callable[..., Any]) -> Callable[..., Any]:
    """`--json` after the subcommand too (`canary-guard status shop --json`)."""

    def turn_on(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
        options = ctx.find_object(_Options)
        if value and options is not None:
            options.json = True

    return click.option(
        "--json",
        "json_",
        is_flag=True,
        expose_value=False,
        callback=turn_on,
        help="Same as the global --json.",
    )(command)


@click.group(help=MAIN_HELP, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--json", "json_", is_flag=True, help="Machine output: one JSON document on stdout.")
@click.option(
    "--as",
    "operator",
    metavar="NAME",
    default=lambda: os.environ.get("USER") or "operator",
    help="Operator identity recorded in the rollout history (default: $USER).",
)
@click.pass_context
def main(ctx: click.Context, json_: bool, operator: str) -> None:
    ctx.obj = _Options(json=json_, operator=operator)


@main.command()
@click.argument("service")
@click.option("--revision", required=True, help="The revision to tag `canary` (already deployed).")
@click.option("--percent", required=True, type=int, help="Its share of traffic, e.g. 5.")
@_json_flag
def start(service: str, revision: str, percent: int) -> None:
    """Start a canary: tag it, give it a share, register the rollout.

    Tags REVISION `canary` and gives it PERCENT of SERVICE's traffic (the revision holding the
    most of the rest becomes stable). Refused while another rollout of the service is running.
    """
    data = _run(lambda ops: ops.start(service, revision, percent))
    _emit(
        data,
        lambda d: (
            f"started canary {d['canary']} at {percent}% (stable {d['stable']}), "
            f"rollout {d['rollout']}\n{before_after(d)}"
        ),
    )


@main.command()
@click.argument("service", required=False)
@_json_flag
def status(service: str | None) -> None:
    """Health of one or every watched rollout (exit 4: unhealthy).

    Health, step, share, streaks, last verdict and why, for SERVICE or, when omitted, for
    every service in CANARY_SERVICES.

    \b
    Exits 0 when every rollout shown is HEALTHY, PAUSED, PROMOTED (or there is none),
    4 when one is DEGRADED, ROLLING_BACK, ROLLED_BACK or FROZEN, so a script can gate on it.
    JSON: the rollout for SERVICE, else {"services": [...]}.
    """
    if service:
        one = _run(lambda ops: ops.status(service))
        _emit(one, status_detail)
        healths = [one["health"]]
    else:
        every = {"services": _run(lambda ops: ops.statuses())}
        _emit(every, status_table)
        healths = [row["health"] for row in every["services"]]
    if UNHEALTHY.intersection(healths):
        sys.exit(EXIT_UNHEALTHY)


@main.command()
@click.argument("service")
@_json_flag
def metrics(service: str) -> None:
    """The canary's values against the GO and rollback bars.

    Measured over the policy's recent window, which ends the data lag before now.
    """
    _emit(_run(lambda ops: ops.metrics(service)), metrics_text)


@main.command()
@click.argument("service")
@click.option("--reason", help="Recorded in the history.")
@_json_flag
def advance(service: str, reason: str | None) -> None:
    """Move the canary to the next ramp step now.

    Whatever the verdict and soak time: the release owner decides. Allowed while paused.
    """
    extra = {"reason": reason} if reason else {}
    data = _run(lambda ops: ops.advance(service, **extra))
    _emit(data, lambda d: f"{d['message']}\n{before_after(d)}")


@main.command()
@click.argument("service")
@click.option("--reason", help="Recorded in the history.")
@_json_flag
def pause(service: str, reason: str | None) -> None:
    """Stop checkpoints from advancing the rollout.

    The rollback rules still apply, and `advance` by hand still works.
    """
    extra = {"reason": reason} if reason else {}
    data = _run(lambda ops: ops.pause(service, **extra))
    _emit(data, lambda d: f"paused {d['rollout']}")


@main.command()
@click.argument("service")
@click.option("--reason", help="Recorded in the history.")
@_json_flag
def resume(service: str, reason: str | None) -> None:
    """Let checkpoints advance the rollout again."""
    extra = {"reason": reason} if reason else {}
    data = _run(lambda ops: ops.resume(service, **extra))
    _emit(data, lambda d: f"resumed {d['rollout']}")


@main.command()
@click.argument("service")
@click.option("--reason", required=True, help="Why; recorded in the history and the notification.")
@click.option("--dry-run", is_flag=True, help="Show the traffic it would set; change nothing.")
@_json_flag
def rollback(service: str, reason: str, dry_run: bool) -> None:
    """Put all traffic back on the stable revision.

    One Cloud Run update; the canary keeps its `canary` tag at 0 % for debugging.
    """
    data = _run(lambda ops: ops.rollback(service, reason, dry_run=dry_run))
    _emit(data, lambda d: f"{d['status']}: {d['message']}\n{before_after(d)}")


@main.command()
@click.argument("service")
@click.option("--limit", type=click.IntRange(min=1), help="Only the newest N entries.")
@_json_flag
def history(service: str, limit: int | None) -> None:
    """The rollout's recorded decisions, oldest first."""
    extra = {"limit": limit} if limit else {}
    _emit(_run(lambda ops: ops.history(service, **extra)), history_text)


def _run_load_test(service: str, mode: str) -> None:
    data = _run(lambda ops: ops.load_test(service, mode))
    _emit(data, load_test_text)
    if data["outcome"] == "FAIL":
        sys.exit(EXIT_UNHEALTHY)


@main.command("load-test")
@click.argument("service")
@click.option(
    "--mode",
    type=click.Choice(["both", "load", "probe"]),
    default="both",
    show_default=True,
    help="The load test, the rate-limit probe, or both (as the daily job).",
)
@_json_flag
def load_test(service: str, mode: str) -> None:
    """Load-test the canary and stable sides now and record the result (exit 4: FAIL)."""
    _run_load_test(service, mode)


@main.command()
@click.argument("service")
@_json_flag
def probe(service: str) -> None:
    """Rate-limit probe: N requests per side (canary, legacy) with a delay; exit 4 on FAIL."""
    _run_load_test(service, "probe")


from infra.backtest_cli import backtest  # noqa: E402 (a command of its own module)

main.add_command(backtest)

from infra.rehearsal.cli import rehearse  # noqa: E402

main.add_command(rehearse)

if __name__ == "__main__":
    main()
