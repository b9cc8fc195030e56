"""VATT contrastive pretraining.

accelerate launch pretrain.py [--config configs/FILE.yaml] [key=value ...]
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass

from data.config import ConfigError, parse_config, save_config
from data.rundir import new_run_dir, setup_logging

log = logging.getLogger("pretrain")


@dataclass
class PretrainConfig:
    output_dir: str = ""  # empty: a fresh timestamped directory under runs/
    max_steps: int = 1000
    seed: int = 0


def main(argv: list[str] | None = None) -> None:
    setup_logging()
    try:
        cfg = parse_config(PretrainConfig, sys.argv[1:] if argv is None else argv)
    except ConfigError as exc:
        sys.exit(f"pretrain.py: {exc}")
    run_dir = new_run_dir(cfg.output_dir, prefix="pretrain")
    save_config(cfg, run_dir / "config.yaml")
    log.info("run directory: %s", run_dir)


if __name__ == "__main__":
    main()
