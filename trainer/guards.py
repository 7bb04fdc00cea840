"""What stops a run early: a diverged loss, and SIGTERM (preemption, suspend, node drain).

Both decisions are made identically on every rank: the divergence check reads the loss after
its all-reduce (a NaN on any rank makes the mean NaN everywhere) and the global gradient norm;
the SIGTERM flag is OR-ed across ranks every step (see control.py).
"""

from __future__ import annotations

import math
import signal
import threading
from dataclasses import dataclass

from diffar.trainer.errors import UserError

# Exit status after a SIGTERM stop: 128 + SIGTERM, what a shell reports and what Kubernetes
# and the Training Operator's ExitCode restart policy treat as "retry", not "failed".
SIGTERM_EXIT = 128 + signal.SIGTERM


class TrainingDiverged(UserError):
    """The loss or gradient norm stopped being finite; no checkpoint or export was written."""


class Stopped(Exception):
    """SIGTERM arrived; the run saved what it could and leaves without a traceback."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


@dataclass
class FiniteGuard:
    """Counts consecutive steps whose loss or gradient norm is NaN or infinite."""

    patience: int
    bad_run: int = 0
    first_bad: int | None = None

    def observe(self, step: int, loss: float, grad_norm: float | None) -> None:
        bad = not math.isfinite(loss) or (grad_norm is not None and not math.isfinite(grad_norm))
        if not bad:
            self.bad_run, self.first_bad = 0, None
            return
        if self.bad_run == 0:
            self.first_bad = step
        self.bad_run += 1
        if self.bad_run >= self.patience:
            raise TrainingDiverged(self.describe(step) + "; stopped without saving")

    @property
    def healthy(self) -> bool:
        """The last observed step was finite: its state may be saved."""
        return self.bad_run == 0

    def describe(self, step: int) -> str:
        return (
            f"training diverged: {self.bad_run} consecutive step(s) with a non-finite loss or "
            f"gradient norm (steps {self.first_bad}-{step}); lower optim.lr, raise "
            "optim.warmup_fraction or check the data, then resume from the last checkpoint"
        )


class SigtermFlag:
    """Set by SIGTERM; the training loop polls it at step boundaries. The previous handler
    comes back on `restore()`."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self._previous = None
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame) -> None:
        self.event.set()

    @property
    def raised(self) -> bool:
        return self.event.is_set()

    def restore(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None
