"""How well an exported tower transfers: probes on downstream tasks, beside its random-init twin.

    python -m eval.downstream --export RUN/export --task shapes/video/shape --json results.json
    python -m eval.downstream --export RUN/export --suite shapes --suite speech --out results/
    python -m eval.downstream --export RUN/export --task esc50 --root ESC-50-master --split 1 --tower audio

A task is either built from the project's own corpora (``shapes/...``, ``speech/...``: generated under
``--data-dir`` on first use, with seeds unseen in pretraining) or read from a real dataset in its
distributed layout (``ucf101``, ``hmdb51``, ``esc50``, ``speech_commands``, ``lrw`` with ``--root``).
Prints the markdown table; ``--json``, ``--markdown`` and ``--png`` (or ``--out DIR`` for all three)
keep the results. ``--protocol finetune`` trains the tower itself and can run under ``accelerate launch``.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import os
import shlex
import sys
import time
from pathlib import Path

from data.cli import setup_logging
from data.collate import DataFailureError
from data.downstream import Task, TaskError
from data.files import OutputPathError, check_output_path
from data.media import MediaError
from eval.downstream import harness, report
from eval.vatt_export import export_fingerprint
from train.export import ExportError

log = logging.getLogger("eval.downstream")

SUITES = ("shapes", "speech")
REAL = ("ucf101", "hmdb51", "esc50", "speech_commands", "lrw")


def build_tasks(names: list[str], suites: list[str], args: argparse.Namespace) -> list[Task]:
    """The tasks named on the command line, in order: corpus tasks by name or suite, real datasets by kind."""
    from data.downstream.registry import read_task
    from data.downstream.shapes_tasks import shapes_tasks
    from data.downstream.speech_tasks import speech_tasks

    data_dir = Path(args.data_dir)
    corpora = {
        "shapes": lambda: shapes_tasks(data_dir / "shapes", progress=not args.quiet),
        "speech": lambda: speech_tasks(data_dir / "speech", progress=not args.quiet),
    }
    built: dict[str, dict[str, Task]] = {}

    def corpus(kind: str) -> dict[str, Task]:
        if kind not in built:
            built[kind] = corpora[kind]()
        return built[kind]

    tasks: list[Task] = []
    for suite in suites:
        tasks.extend(corpus(suite).values())
    for name in names:
        kind = name.split("/", 1)[0]
        if kind in corpora:
            known = corpus(kind)
            if name not in known:
                raise TaskError(f"--task: unknown task {name!r}; {kind} has {', '.join(known)}")
            tasks.append(known[name])
        elif kind in REAL:
            if not args.root:
                raise TaskError(f"--task {name}: needs --root, the dataset's directory as distributed")
            options = {"split": args.split} if kind in ("ucf101", "hmdb51") else {}
            if kind == "esc50":
                options = {"fold": args.split}
            tasks.append(read_task(kind, args.root, **options))
        else:
            raise TaskError(
                f"--task: unknown task {name!r}; expected shapes/..., speech/... or one of {', '.join(REAL)}"
            )
    return tasks


def _check_args(args: argparse.Namespace) -> dict[str, Path]:
    """Every flag before any work; returns the output files. Raises ValueError/OutputPathError (one line)."""
    if not args.task and not args.suite:
        raise ValueError("name at least one --task or --suite")
    if args.seeds < 1:
        raise ValueError(f"--seeds must be >= 1, got {args.seeds}")
    if any(s < 1 for s in args.shots):
        raise ValueError(f"--shots must be >= 1, got {args.shots}")
    if not Path(args.export).is_dir():
        raise ExportError(f"--export: export directory {args.export!r} not found")
    outputs: dict[str, Path] = {}
    if args.out:
        out = Path(args.out)
        if out.exists() and not out.is_dir():
            raise OutputPathError(f"--out: {str(out)!r} is a file; expected a folder for the results")
        for kind, name in (("json", "results.json"), ("markdown", "results.md"), ("png", "results.png")):
            outputs[kind] = out / name
    for kind in ("json", "markdown", "png"):
        if getattr(args, kind):
            outputs[kind] = Path(getattr(args, kind))
    for kind, path in outputs.items():
        try:
            check_output_path(path, "file")
        except OutputPathError as exc:
            raise OutputPathError(f"--{kind}: {exc}") from None
    return outputs


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m eval.downstream", description=__doc__.splitlines()[0])
    p.add_argument("--export", default=None, help="an export directory (RUN/export)")
    p.add_argument("--from-json", default=None, help="redraw the table and PNG of an earlier results.json")
    p.add_argument("--task", action="append", default=[], help="a task: shapes/video/shape, speech/kws, esc50, ...")
    p.add_argument("--suite", action="append", default=[], choices=SUITES, help="every task of a corpus")
    p.add_argument("--tower", default=None, help="video, audio or text (default: the task's first modality)")
    p.add_argument(
        "--protocol", action="append", default=[], choices=harness.PROTOCOLS,
        help=f"repeatable; default {' '.join(harness.DEFAULT_PROTOCOLS)}",
    )  # fmt: skip
    p.add_argument("--init", choices=("both", "pretrained", "random"), default="both", help="random: the same "
                   "architecture, randomly initialised (one tower per seed)")  # fmt: skip
    p.add_argument("--seeds", type=int, default=3, help="seeds per protocol and initialisation (>= 1)")
    p.add_argument("--pool", choices=("agg", "mean"), default="agg", help="clip feature: AGG token or mean of tokens")
    p.add_argument("--shots", type=int, nargs="+", default=[5, 20], help="labelled examples per class, few-shot")
    p.add_argument("--root", default=None, help="a real dataset's directory, as distributed")
    p.add_argument("--split", type=int, default=1, help="official split (UCF101, HMDB51) or fold (ESC-50)")
    p.add_argument("--data-dir", default=".cache/downstream", help="where the corpus tasks are generated")
    p.add_argument("--finetune-dir", default="runs/downstream", help="run directories of --protocol finetune")
    p.add_argument("--finetune", nargs="*", default=[], metavar="KEY=VALUE", help="fine-tune config overrides")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=None, help="folder for results.json, results.md and results.png")
    p.add_argument("--json", default=None)
    p.add_argument("--markdown", default=None)
    p.add_argument("--png", default=None)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    setup_logging()
    started = time.perf_counter()
    if args.from_json:
        redraw(args)
        return
    try:
        if not args.export:
            raise ValueError("--export is required (or --from-json to redraw earlier results)")
        outputs = _check_args(args)
        inits = ("pretrained", "random") if args.init == "both" else (args.init,)
        cfg = harness.HarnessConfig(
            export=Path(args.export), tower=args.tower, protocols=tuple(args.protocol) or harness.DEFAULT_PROTOCOLS,
            inits=inits, seeds=args.seeds, pool=args.pool, shots=tuple(args.shots), device=args.device,
            progress=not args.quiet, finetune_args=list(args.finetune), finetune_dir=Path(args.finetune_dir),
        )  # fmt: skip
        tasks = build_tasks(args.task, args.suite, args)
        records = harness.run(tasks, cfg)
    except (TaskError, ExportError, MediaError, DataFailureError, ValueError, OSError) as exc:
        text = str(exc).strip()
        sys.exit(f"eval.downstream: {text.splitlines()[0] if text else type(exc).__name__}")
    if int(os.environ.get("RANK", "0")) != 0:  # under accelerate launch, one process reports
        return
    rows = report.summarise(records)
    table = report.markdown(rows)
    print(table)
    meta = {
        "export": str(args.export),
        "command": shlex.join(["python", "-m", "eval.downstream", *(argv if argv is not None else sys.argv[1:])]),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "seconds": round(time.perf_counter() - started, 1),
        "fingerprint": export_fingerprint(cfg.export),
        "tasks": {t.name: {"classes": t.num_classes, **t.counts()} for t in tasks},
    }
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)  # only results.* are written into it
    if "json" in outputs:
        report.write_json(records, rows, outputs["json"], meta)
    if "markdown" in outputs:
        report.write_markdown(rows, outputs["markdown"])
    if "png" in outputs:
        report.plot(rows, outputs["png"], title=f"{args.export}  ({meta['date']})")
    for path in outputs.values():
        log.info("wrote %s", path)


def redraw(args: argparse.Namespace) -> None:
    """The table (stdout, ``--markdown``) and the PNG (``--png``) of a results file written earlier."""
    try:
        for flag in ("png", "markdown"):
            if getattr(args, flag):
                check_output_path(getattr(args, flag), "file")
        records, meta = report.read_json(args.from_json)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        sys.exit(f"eval.downstream: --from-json {args.from_json}: {str(exc).splitlines()[0] if str(exc) else exc!r}")
    rows = report.summarise(records)
    print(report.markdown(rows))
    if args.markdown:
        report.write_markdown(rows, args.markdown)
    if args.png:
        report.plot(rows, args.png, title=f"{meta.get('export', '')}  ({meta.get('date', '')})")


if __name__ == "__main__":
    main()
