"""The documented in-process checkpoint call (README, "Running a checkpoint at a given time"):
`from shared.checkpoint import handle_checkpoint`, with `shared.checkpoint.Clients`.

The checkpoint handler lives in shared/handlers/checkpoint.py. This module stays here because
callers outside canary-guard (external checks, simulations) import these names from here; it
only re-exports the handler's public names, so they are the handler's own objects. canary-guard's
own code imports the handler; to patch something, patch it there, not here.
"""

from __future__ import annotations

# Re-exported: the documented names and the rest of the handler's own `__all__`.
from shared.handlers.checkpoint import (  # noqa: F401
    Clients,
    StepResult,
    __all__,
    change_step,
    checkpoint_rollout,
    handle_checkpoint,
    read_minutes,
    run_checkpoints,
    runtime_clients,
)
