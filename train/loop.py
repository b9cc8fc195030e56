"""The one training loop that both launchers call, and the end of a run.

A launcher builds its model, data and objective, then hands :func:`train` a step function (a batch ->
the named loss terms, ``"loss"`` being the one to minimise) and an evaluate callback (a step -> the
evaluation record, or None on the processes that do not evaluate). The loop owns everything around
them, once: gradient accumulation, backward, clipping, the optimizer and scheduler steps, throughput,
the progress bar, the cadence of logging, saving and evaluation, stopping on a signal, and the end of
the run (bad-media budget, last state, last evaluation, ``metrics_final.json``, ``curves.png``).
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from data.cli import setup_logging
from data.collate import DataFailureError, FailureTracker
from data.files import atomic_write_json
from data.manifest import ManifestError
from data.schema import ConfigError
from train.config import RunConfig
from train.export import ExportError
from train.metrics import MetricsLog, start_trackers
from train.plots import plot_curves
from train.run_dir import RunDirError, cpu_threads, open_shared_run_dir
from train.signals import StopRequest, agree, failure_totals
from train.states import StateError, StateManager

log = logging.getLogger(__name__)


@dataclass
class LoopConfig:
    """Cadence and limits of the loop, in optimizer steps (``grad_accum`` micro-batches each)."""

    max_steps: int
    grad_accum: int = 1
    grad_clip: float = 0.0  # 0: no clipping
    log_every: int = 10
    save_every: int = 0  # 0: states only on a signal
    eval_every: int = 0  # 0: evaluation only at the end
    unit: str = "clips"  # what the data yields, for the bad-media counts ("skipped_<unit>")


@dataclass
class Hooks:
    """What a recipe adds to the loop without editing it.

    ``count(batch)``: items to count towards throughput (name -> number, this process), logged as
    ``<name>_per_s`` over all processes; ``before_update()``: after backward, before clipping (e.g.
    dropping the gradients of frozen weights); ``after_step(step)``: after each optimizer step.
    """

    is_empty: Callable[[dict[str, Any]], bool] = lambda batch: not batch.get("ids")
    count: Callable[[dict[str, Any]], dict[str, float]] = lambda batch: {}
    before_update: Callable[[], None] = lambda: None
    after_step: Callable[[int], None] = lambda step: None
    postfix: list[str] = field(default_factory=list)  # record keys shown on the progress bar


class RunFailed(RuntimeError):
    """The run cannot go on (too much bad media); the message lists the first bad files."""


# What a user's config, data or run directory can be wrong about: a message, never a traceback.
USER_ERRORS: tuple[type[Exception], ...] = (ConfigError, ManifestError, ExportError, RunDirError, StateError)


def launch(prog: str, run: Callable[[], None], errors: tuple[type[Exception], ...] = ()) -> None:
    """Run a launcher's ``run``; a user error ends the process with one line (``prog: message``)."""
    try:
        run()
    except RunFailed as exc:
        sys.exit(f"{prog}: {exc}")
    except (*USER_ERRORS, *errors) as exc:
        sys.exit(f"{prog}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")


def train(
    cfg: LoopConfig,
    *,
    accelerator: Any,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    loader: Iterable[dict[str, Any]],
    step_fn: Callable[[dict[str, Any]], dict[str, torch.Tensor]],
    evaluate: Callable[[int], dict[str, Any] | None],
    states: StateManager,
    metrics: MetricsLog,
    failures: FailureTracker,
    start_step: int,
    hooks: Hooks | None = None,
    desc: str = "train",
) -> int | None:
    """Train from ``start_step`` to ``cfg.max_steps``; returns the last step, or None when a signal stopped it.

    On a stop the loop saves a state and returns at once (the run is resumed later); otherwise the
    caller finishes the run with :func:`finish`.
    """
    hooks = hooks or Hooks()
    world = accelerator.num_processes
    step, micro, halt = start_step, 0, False
    window: dict[str, float] = {}
    window_steps, window_start = 0, time.perf_counter()
    bar = tqdm(total=cfg.max_steps, initial=start_step, desc=desc, disable=not accelerator.is_main_process)
    with StopRequest() as stop:
        for batch in loader:
            failures.update(batch, check=False)
            try:
                halt, skip = agree(accelerator, stop, hooks.is_empty(batch), failures)
            except DataFailureError as exc:
                raise RunFailed(str(exc)) from None
            if skip:
                continue

            # forward, backward, update
            with accelerator.accumulate(model):
                losses = step_fn(batch)
                accelerator.backward(losses["loss"])
                hooks.before_update()
                if accelerator.sync_gradients and cfg.grad_clip > 0:
                    accelerator.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            for name, n in hooks.count(batch).items():
                window[name] = window.get(name, 0.0) + n * world
            micro += 1
            if micro % cfg.grad_accum:
                continue
            scheduler.step()
            step += 1
            window_steps += 1
            bar.update(1)
            hooks.after_step(step)

            # logging
            if step % cfg.log_every == 0 or step == cfg.max_steps:
                reduced = {k: accelerator.reduce(v.detach().float(), "mean").item() for k, v in losses.items()}
                elapsed = time.perf_counter() - window_start
                record = {"step": step, **reduced, "lr": scheduler.get_last_lr()[0]}
                record["steps_per_s"] = window_steps / elapsed
                record.update({f"{name}_per_s": n / elapsed for name, n in window.items()})
                if accelerator.is_main_process:
                    metrics.write(record)
                shown = ["loss", "lr", *hooks.postfix]
                bar.set_postfix({k: f"{record[k]:.3g}" for k in shown if k in record})
                window, window_steps, window_start = {}, 0, time.perf_counter()

            # termination and cadence
            if halt:
                states.save(step)
                log.warning("stopped at step %d; state saved in %s", step, states.root)
                bar.close()
                return None
            if cfg.save_every and step % cfg.save_every == 0 and step < cfg.max_steps:
                states.save(step)
            if cfg.eval_every and step % cfg.eval_every == 0 and step < cfg.max_steps:
                evaluate(step)
    bar.close()
    return step


def finish(
    cfg: LoopConfig,
    *,
    accelerator: Any,
    run_dir: Path,
    step: int,
    start_step: int,
    evaluate: Callable[[int], dict[str, Any] | None],
    states: StateManager,
    metrics: MetricsLog,
    failures: FailureTracker,
) -> dict[str, Any] | None:
    """The end of a run: the bad-media budget over all processes, the last state and evaluation,
    ``metrics_final.json`` and ``curves.png``. Returns the final evaluation (None off the main process)."""
    attempted, skipped = failure_totals(accelerator, failures)
    try:
        failures.check(final=True, totals=(attempted, skipped))
    except DataFailureError as exc:
        raise RunFailed(str(exc)) from None
    if cfg.save_every and (step > start_step or not (run_dir / "metrics_final.json").exists()):
        states.save(step)
    final = evaluate(step)
    if accelerator.is_main_process:
        metrics.write({"step": step, f"skipped_{cfg.unit}": skipped, f"attempted_{cfg.unit}": attempted})
        atomic_write_json(run_dir / "metrics_final.json", final)
        plot_curves(metrics.read(), run_dir / "curves.png")
        log.info("skipped %s (bad media): %d of %d", cfg.unit, skipped, attempted)
    # Every process tears the process group down at the same point: one that destroys it while another
    # is still working can leave the other waiting on a closed connection.
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return final


class Trainer:
    """What every recipe sets up the same way, in the order a recipe reads top to bottom.

    ``Trainer(cfg)`` builds the Accelerator (and logging, torch threads); :meth:`open` the run
    directory; :meth:`prepare` the model and optimizer for the devices, the states (resumed), the
    metrics log and trackers; :meth:`fit` runs :func:`train` then :func:`finish`.
    """

    def __init__(self, cfg: RunConfig, **accelerator_kwargs: Any) -> None:
        from accelerate import Accelerator

        self.cfg = cfg
        self.accelerator = Accelerator(
            mixed_precision=cfg.mixed_precision, gradient_accumulation_steps=cfg.grad_accum, **accelerator_kwargs
        )
        setup_logging(main_process=self.accelerator.is_main_process)
        if self.accelerator.device.type == "cpu":
            torch.set_num_threads(cpu_threads(cfg.cpu_threads, self.accelerator.num_processes))
        self.run_dir, self.name = Path(), "train"
        self.start_step = 0

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    def open(self, config: dict[str, Any], prefix: str) -> Path:
        """The run directory (:func:`train.run_dir.open_run_dir` semantics), agreed by every process."""
        c = self.cfg
        self.run_dir = open_shared_run_dir(
            self.accelerator, c.output_dir, config, resume=c.resume, overwrite=c.overwrite, prefix=prefix
        )
        self.config, self.name = config, prefix
        return self.run_dir

    def prepare(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        max_fail_fraction: float,
    ) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
        """Models and optimizer on their devices; the newest state loaded (``resume=auto``); metrics
        rewound to it; trackers started. The scheduler and the bad-media counts are saved as JSON."""
        acc, c = self.accelerator, self.cfg
        model, optimizer = acc.prepare(model, optimizer)
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.failures = FailureTracker(max_fail_fraction=max_fail_fraction)
        custom = {"scheduler": scheduler, "failures": self.failures}
        self.states = StateManager(self.run_dir, acc, keep=c.keep_states, custom=custom)
        self.start_step = self.states.resume() if c.resume == "auto" else 0
        self.metrics = MetricsLog(self.run_dir / "metrics.jsonl", acc)
        if self.is_main:
            self.metrics.rewind(self.start_step)  # what a killed run logged after its last state is logged again
        start_trackers(acc, c.report_to, self.run_dir, self.run_dir.name, self.config)
        return model, optimizer

    def fit(
        self,
        loader: Iterable[dict[str, Any]],
        step_fn: Callable[[dict[str, Any]], dict[str, torch.Tensor]],
        evaluate: Callable[[int], dict[str, Any] | None],
        *,
        grad_clip: float,
        eval_every: int,
        unit: str,
        hooks: Hooks | None = None,
    ) -> dict[str, Any] | None:
        """Train to ``max_steps`` (the progress bar named after the run) and finish the run; returns the
        final evaluation on the main process, None elsewhere or when a signal stopped the run (its state
        is saved)."""
        c = self.cfg
        loop = LoopConfig(c.max_steps, c.grad_accum, grad_clip, c.log_every, c.save_every, eval_every, unit)
        parts = {"accelerator": self.accelerator, "states": self.states, "metrics": self.metrics}
        parts.update(failures=self.failures, evaluate=evaluate, start_step=self.start_step)
        self.model.train()
        step = train(
            loop, model=self.model, optimizer=self.optimizer, scheduler=self.scheduler, loader=loader,
            step_fn=step_fn, hooks=hooks, desc=self.name, **parts,
        )  # fmt: skip
        if step is None:
            return None
        return finish(loop, run_dir=self.run_dir, step=step, **parts)
