"""Stopping a run cleanly, and what every process of a run must agree on between steps."""

from __future__ import annotations

import logging
from typing import Any


class StopRequest:
    """Turns SIGTERM and Ctrl-C into a flag the training loop checks between steps.

    The loop then saves a state and exits cleanly; a second Ctrl-C interrupts at once. With several
    processes the flag is agreed among them (:func:`agree`), so a signal to any one stops all of them
    at the same step.
    """

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopRequest:
        import signal

        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        import signal

        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, frame: object) -> None:
        import signal

        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        logging.getLogger(__name__).warning("signal %d received: saving a state and stopping", signum)
        self.requested = True


def agree(accelerator: Any, stop: StopRequest, skip: bool, failures: Any) -> tuple[bool, bool]:
    """(stop, skip) as every process sees them, and the bad-media budget judged on all processes' counts.

    Called once per micro-batch by every process: a stop asked of any process stops all, a batch that
    failed entirely on any process is skipped by all (a process cannot sit out a step that the others'
    gradient reduction waits for), and :class:`~data.collate.FailureTracker` checks the summed counts.
    """
    if accelerator.num_processes == 1:
        failures.check()
        return stop.requested, skip
    import torch

    flags = torch.tensor(
        [float(stop.requested), float(skip), float(failures.attempts), float(failures.failed)],
        dtype=torch.float64,
        device=accelerator.device,
    )
    flags = accelerator.reduce(flags, "sum")
    failures.check(totals=(int(flags[2]), int(flags[3])))
    return bool(flags[0] > 0), bool(flags[1] > 0)


def failure_totals(accelerator: Any, failures: Any) -> tuple[int, int]:
    """(attempts, failed) summed over every process."""
    if accelerator.num_processes == 1:
        return failures.attempts, failures.failed
    import torch

    t = torch.tensor([float(failures.attempts), float(failures.failed)], dtype=torch.float64, device=accelerator.device)
    t = accelerator.reduce(t, "sum")
    return int(t[0]), int(t[1])
