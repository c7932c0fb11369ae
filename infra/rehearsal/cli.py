"""`canary-guard rehearse`: a go-live rehearsal on this machine, with the sample app or your own.

Also what `./dev demo` runs (python -m infra.rehearsal.cli)."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from infra.rehearsal.scripts import CanaryScript

# The scenario library's names, read without importing the decision core: `--help` stays light.
SCENARIOS = sorted(
    path.stem for path in (Path(__file__).resolve().parent.parent / "scenarios").glob("*.json")
)


@click.command()
@click.option(
    "--scenario",
    "scenarios",
    multiple=True,
    metavar="NAME",
    help="A scenario of the library for the sample canary (repeatable; default: the demo's two "
    f"canaries, one promoted, one rolled back). Names: {', '.join(SCENARIOS)}.",
)
@click.option(
    "--stable-cmd", metavar="CMD", help="Bring your own: the command serving the stable revision on $PORT."
)
@click.option("--canary-cmd", metavar="CMD", help="Bring your own: the command serving the canary on $PORT.")
@click.option("--service", default="app", show_default=True, help="The service name in bring-your-own mode.")
@click.option(
    "--speed",
    type=click.FloatRange(1, 120),
    default=12,
    show_default=True,
    help="Rehearsal minutes per real minute.",
)
@click.option("--rps", type=click.FloatRange(1, 2000), default=None, help="Real requests/s per service.")
@click.option(
    "--lag",
    "lag_minutes",
    type=click.IntRange(0, 10),
    default=2,
    show_default=True,
    help="Cloud Monitoring lag, minutes.",
)
@click.option(
    "--soak",
    "soak_minutes",
    type=click.IntRange(1, 120),
    default=2,
    show_default=True,
    help="Each ramp step's soak, minutes.",
)
@click.option(
    "--max-minutes",
    type=click.IntRange(5, 1440),
    default=60,
    show_default=True,
    help="Rehearsal minutes before giving up.",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(path_type=Path),
    help="Where the timeline, report and logs go (default: a temp dir).",
)
@click.option("--no-live", is_flag=True, help="Print decisions as lines instead of the live view.")
def rehearse(
    scenarios: tuple[str, ...],
    stable_cmd: str | None,
    canary_cmd: str | None,
    service: str,
    speed: float,
    rps: float | None,
    lag_minutes: int,
    soak_minutes: int,
    max_minutes: int,
    out_dir: Path | None,
    no_live: bool,
) -> None:
    """Rehearse a go-live: real requests, real metrics, real alerts, canary-guard deciding.

    Starts the emulators, the Cloud Run and Monitoring stand-ins and the functions; serves a
    stable and a canary revision as real processes behind a router that splits their traffic as
    Cloud Run would; and runs the whole stack on one accelerated clock. Exit 0 when every canary
    did what its scenario expects (bring-your-own: when canary-guard decided), 4 otherwise.
    """
    from infra.rehearsal.rehearse import RehearsalOptions, run

    if bool(stable_cmd) != bool(canary_cmd):
        raise click.UsageError("bring your own: give both --stable-cmd and --canary-cmd")
    if stable_cmd and scenarios:
        raise click.UsageError("--scenario drives the sample app; it cannot script your own commands")
    try:
        scripts = _scripts(scenarios, service, bring_your_own=bool(stable_cmd))
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--scenario") from None
    out_dir = out_dir or Path(tempfile.mkdtemp(prefix="canary-guard-rehearsal-"))
    options = RehearsalOptions(
        out_dir=out_dir,
        speed=speed,
        **({"rps": rps} if rps else {}),
        lag_minutes=lag_minutes,
        soak_minutes=soak_minutes,
        max_minutes=max_minutes,
        stable_cmd=stable_cmd,
        canary_cmd=canary_cmd,
        live=not no_live and sys.stdout.isatty(),
    )
    result = run(scripts, options)
    sys.exit(0 if result.ok else 4)


def _scripts(scenarios: tuple[str, ...], service: str, *, bring_your_own: bool) -> list[CanaryScript]:
    from infra.rehearsal.scripts import CanaryScript, demo_scripts, from_scenario

    if bring_your_own:
        return [
            CanaryScript(
                service=service, description="your canary beside your stable revision", expect="decide"
            )
        ]
    if not scenarios:
        return demo_scripts()
    services = ["shop", "cart", "pay", "search", "auth", "feed"]
    if len(scenarios) > len(services):
        raise ValueError(f"at most {len(services)} scenarios at once")
    return [from_scenario(name, service=svc) for name, svc in zip(scenarios, services, strict=False)]


if __name__ == "__main__":
    rehearse()
