"""Preemption: SIGTERM / SIGUSR2 (SLURM's time-limit warning) set a flag the loop checks at step boundaries."""

from __future__ import annotations

import logging
import signal
import threading
from contextlib import contextmanager
from typing import Iterator

log = logging.getLogger(__name__)
SIGNALS = (signal.SIGTERM, signal.SIGUSR2)


class Preempted(Exception):
    """Training stopped on SIGTERM/SIGUSR2 after saving a checkpoint; rerun the same command to resume."""

    def __init__(self, step: int, checkpoint: object) -> None:
        super().__init__(f"preempted at step {step}; checkpoint saved to {checkpoint}")
        self.step, self.checkpoint = step, checkpoint


class PreemptionFlag:
    """Set by the signal handler; read by the training loop once per step."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def __bool__(self) -> bool:
        return self.signum is not None

    def handler(self, signum: int, frame: object) -> None:
        log.warning("received signal %d: saving a checkpoint at the next step boundary", signum)
        self.signum = signum


@contextmanager
def catch_preemption() -> Iterator[PreemptionFlag]:
    """Install the handlers (main thread only) for the duration of training; restore the old ones after."""
    flag = PreemptionFlag()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return
    old = {s: signal.signal(s, flag.handler) for s in SIGNALS}
    try:
        yield flag
    finally:
        for s, h in old.items():
            signal.signal(s, h)
