"""``metrics.jsonl``: one JSON object per line, what every run logs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from data.files import atomic_write_text
from data.schema import flatten


class MetricsLog:
    """Appends one JSON object per line to ``metrics.jsonl``; each line is flushed as it is written.

    A line torn by a kill is skipped when reading; :meth:`rewind` drops what a resumed run will
    write again, so a run killed and resumed logs every step once.
    """

    def __init__(self, path: str | Path, accelerator: Any = None) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.accelerator = accelerator  # its trackers (start_trackers) get every record too

    def write(self, record: dict[str, Any]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
        if self.accelerator is not None and self.accelerator.trackers and isinstance(record.get("step"), int):
            numbers = {k: v for k, v in record.items() if k != "step" and isinstance(v, (int, float))}
            self.accelerator.log(numbers, step=record["step"])

    def read(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        records = []
        for line in self.path.read_text(errors="replace").splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line torn by a kill
            if isinstance(rec, dict):
                records.append(rec)
        return records

    def rewind(self, step: int) -> None:
        """Keep only the records up to ``step`` (the step a run starts or resumes from)."""
        if not self.path.exists():
            return
        kept = [r for r in self.read() if isinstance(r.get("step"), int) and r["step"] <= step]
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))


def start_trackers(accelerator: Any, report_to: str, run_dir: Path, project: str, config: dict[str, Any]) -> bool:
    """Start Accelerate's experiment trackers named in ``report_to`` ("none", or comma-separated names
    such as ``tensorboard``, ``wandb``, ``all``), logging under ``run_dir/trackers``; returns whether any
    started. :class:`MetricsLog` then sends them every numeric record it writes."""
    names = [n.strip() for n in report_to.split(",") if n.strip() and n.strip() != "none"]
    if not names:
        return False
    from accelerate.tracking import filter_trackers

    accelerator.project_configuration.set_directories(str(run_dir / "trackers"))
    accelerator.project_configuration.logging_dir = str(run_dir / "trackers")
    accelerator.log_with = filter_trackers(names, accelerator.logging_dir)
    flat = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in flatten(config).items()}
    accelerator.init_trackers(project, config=flat)
    return True
