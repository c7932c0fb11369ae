"""canary-guard operator CLI: the go-live checklist's hand-run steps as subcommands.

Only argument parsing, client construction and rendering live here; every rule (what may be
started, advanced, paused or rolled back, and what is healthy) is in shared/operations.py.
Clients come from the same environment variables as the functions (shared/runtime.py), and the
heavy Google libraries are imported only when a subcommand runs, so `--help` stays fast.

Run it: python -m infra.cli --help   (or `canary-guard` once the package is installed)
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click

if TYPE_CHECKING:
    from shared.operations import Operations

T = TypeVar("T")

EXIT_OK = 0
EXIT_REFUSED = 1  # shared.operations.OperationError
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

    from shared.cloudrun import ControlPlaneError
    from shared.config import ConfigError
    from shared.operations import OperationError
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
        from shared.checkpoint import runtime_clients
        from shared.operations import Operations

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


# --- rendering ---------------------------------------------------------------------------


def _when(value: Any) -> str:
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "Z"
    if isinstance(value, str) and value:
        with contextlib.suppress(ValueError):
            return _when(datetime.fromisoformat(value))
    return str(value) if value else "-"


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]], indent: str = "") -> str:
    """Left-aligned columns; the last column is never padded (free-text messages go there)."""
    cells = [[str(cell) for cell in row] for row in [headers, *rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = []
    for row in cells:
        padded = [cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=False)]
        lines.append((indent + "  ".join([*padded, row[-1]])).rstrip())
    return "\n".join(lines)


def _traffic(targets: Sequence[Mapping[str, Any]]) -> str:
    parts = []
    # Biggest share first, whatever order Cloud Run lists them in: stable reads first.
    for target in sorted(targets, key=lambda t: (-t.get("percent", 0), t["revision"])):
        tag = f" [{target['tag']}]" if target.get("tag") else ""
        parts.append(f"{target['revision']} {target.get('percent', 0)}%{tag}")
    return ", ".join(parts) or "-"


def _before_after(data: Mapping[str, Any]) -> str:
    return f"  before  {_traffic(data.get('before') or [])}\n  after   {_traffic(data.get('after') or [])}"


def _short(service: str, all_names: Sequence[str]) -> str:
    """location/service when every name is in one project (short but unambiguous), else the full name."""
    parts = service.split("/")
    projects = {name.split("/")[1] for name in all_names if name.count("/") == 5}
    if len(parts) == 6 and len(projects) == 1:
        return f"{parts[3]}/{parts[5]}"
    return service


def _streaks(streaks: Mapping[str, int]) -> str:
    return ", ".join(f"{rule} {count}" for rule, count in streaks.items()) or "none"


def _status_detail(data: Mapping[str, Any]) -> str:
    lines = [f"{data['service'].rsplit('/', 1)[-1]}  {data['health']}  {data['why']}".rstrip()]
    rows = [
        ("service", data["service"]),
        ("rollout", f"{data['rollout']} ({data['phase']})"),
        (
            "canary",
            f"{data['canary_revision']} at {data['canary_percent']}%, step {data['step']} "
            f"since {_when(data['step_started_at'])}",
        ),
        ("stable", data["stable_revision"]),
        ("paused", "yes" if data["paused"] else "no"),
        ("streaks", _streaks(data["streaks"])),
        (
            "last verdict",
            f"{data['last_verdict']} at {_when(data['last_verdict_at'])}: "
            + "; ".join(data["last_verdict_reasons"])
            if data["last_verdict"]
            else "none yet",
        ),
        (
            "load test",
            f"{data['last_load_test_summary']} at {_when(data['last_load_test_at'])}"
            if data.get("last_load_test")
            else "none yet",
        ),
        ("started by", data["started_by"] or "-"),
    ]
    width = max(len(key) for key, _ in rows)
    lines += [f"  {key.ljust(width)}  {value}" for key, value in rows]
    return "\n".join(lines)


def _status_table(data: Mapping[str, Any]) -> str:
    names = [row["service"] for row in data["services"]]
    rows = []
    for row in data["services"]:
        if row["health"] == "NONE":
            rows.append([_short(row["service"], names), "NONE", "-", "-", "-", "-", "no rollout"])
            continue
        paused = " (paused)" if row["paused"] else ""
        rows.append(
            [
                _short(row["service"], names),
                row["health"],
                row["step"],
                row["canary_revision"],
                f"{row['canary_percent']}%{paused}",
                row["stable_revision"],
                row["why"] or "-",
            ]
        )
    return _table(["SERVICE", "HEALTH", "STEP", "CANARY", "SHARE", "STABLE", "WHY"], rows)


def _measure(value: float | None, unit: str) -> str:
    if value is None:
        return "no data"
    return f"{value:.0f} ms" if unit == "ms" else f"{value * 100:.2f}%"


def _metrics(data: Mapping[str, Any]) -> str:
    from shared.judge import MEASURES  # the unit of each measured value

    window = data["window"]
    head = (
        f"{data['service'].rsplit('/', 1)[-1]} canary {data['canary_revision']}: "
        f"{data['request_count']} requests, {data['error_count']} 5xx "
        f"in ({_when(window['start'])}, {_when(window['end'])}]"
    )
    rows = []
    for name, bars in data["measured"].items():
        unit = MEASURES[name][2] if name in MEASURES else ""
        rollback = bars.get("rollback_bar")
        rows.append(
            [
                name,
                _measure(bars.get("value"), unit),
                _measure(bars.get("go_bar"), unit),
                _measure(rollback, unit) if rollback is not None else "-",
            ]
        )
    table = _table(["MEASURE", "VALUE", "GO IF <=", "ROLL BACK IF >"], rows, indent="  ")
    return f"{head}\n{table}\n  verdict  {data['verdict']}: {'; '.join(data['reasons'])}"


def _history(data: Mapping[str, Any]) -> str:
    rows = []
    for entry in data["entries"]:
        # Who acted is stored under the field its kind uses; an observation names its source.
        who = next(
            (entry[key] for key in ("by", "requested_by", "started_by", "source") if entry.get(key)), ""
        )
        message = entry.get("message") or entry.get("verdict") or ""
        rows.append([_when(entry.get("at")), entry.get("kind", "?"), who or "-", message])
    table = _table(["AT (UTC)", "KIND", "BY", "MESSAGE"], rows, indent="  ")
    return f"history of {data['rollout']} ({len(rows)} entries)\n{table}"


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
            f"rollout {d['rollout']}\n{_before_after(d)}"
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
        _emit(one, _status_detail)
        healths = [one["health"]]
    else:
        every = {"services": _run(lambda ops: ops.statuses())}
        _emit(every, _status_table)
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
    _emit(_run(lambda ops: ops.metrics(service)), _metrics)


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
    _emit(data, lambda d: f"{d['message']}\n{_before_after(d)}")


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
    _emit(data, lambda d: f"{d['status']}: {d['message']}\n{_before_after(d)}")


@main.command()
@click.argument("service")
@click.option("--limit", type=click.IntRange(min=1), help="Only the newest N entries.")
@_json_flag
def history(service: str, limit: int | None) -> None:
    """The rollout's recorded decisions, oldest first."""
    extra = {"limit": limit} if limit else {}
    _emit(_run(lambda ops: ops.history(service, **extra)), _history)


def _load_test(data: Mapping[str, Any]) -> str:
    results = data["results"]
    load = results.get("load_test", {})
    probe = results.get("probe", {})
    runs = [("load", side, r, r["verdict"]["status"]) for side, r in load.items()]
    runs += [
        ("probe", side, r, probe["verdict"]["sides"][side]) for side, r in probe.items() if side != "verdict"
    ]
    rows = []
    for kind, side, r, verdict in runs:
        failures, latency = r["failures"], r["latency_ms"]
        errors = failures["timeout"] + failures["connection"] + failures["cancelled"]
        percentiles = "/".join(
            "-" if latency[k] is None else f"{latency[k]:.0f}" for k in ("p50", "p95", "p99")
        )
        rows.append(
            [
                kind,
                side,
                r["requests"],
                r["successes"],
                failures["4xx"],
                failures["5xx"],
                r["rate_limited_429"],
                errors,
                f"{r['achieved_rate_per_s']:.1f}",
                percentiles,
                verdict,
            ]
        )
    headers = ["RUN", "SIDE", "REQ", "OK", "4XX", "5XX", "429", "ERR", "REQ/S", "P50/P95/P99 MS", "VERDICT"]
    return f"{data['message']}\n{_table(headers, rows)}"


def _run_load_test(service: str, mode: str) -> None:
    data = _run(lambda ops: ops.load_test(service, mode))
    _emit(data, _load_test)
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

if __name__ == "__main__":
    main()
