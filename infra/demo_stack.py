"""What the demos share: the demo services' names, a revision's minutes written to the
Monitoring stand-in, and the operator CLI run as a user would, its output shown."""

from __future__ import annotations

import textwrap
from datetime import datetime
from typing import Any

from infra.localstack import PROJECT

LOCATION = "us-central1"
SERVICE = f"projects/{PROJECT}/locations/{LOCATION}/services/shop"
CART = f"projects/{PROJECT}/locations/{LOCATION}/services/cart"  # a second service, guarded at once


def demo_minutes(monitoring: Any, service: str, revision: str, minutes: list[datetime], traffic: Any) -> None:
    """The revision's traffic in these minutes, written to the Monitoring stand-in."""
    from infra.metrics_feed import feed

    feed(
        monitoring,
        project=PROJECT,
        location=LOCATION,
        service=service,
        revision=revision,
        minutes=minutes,
        traffic=traffic,
    )


def cli(stack: Any, *args: str) -> None:
    """Run the operator CLI as a user would, against the local stack, and show its output."""
    print(f"\n$ canary-guard {' '.join(args)}")
    done = stack.operator_cli(*args)
    print(textwrap.indent(done.stdout.rstrip() or done.stderr.rstrip(), "  "))
