"""The one logging format of every command."""

from __future__ import annotations

import logging

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(level: int = logging.INFO, main_process: bool = True) -> None:
    """Configure the root logger once, for scripts; libraries only call ``logging.getLogger``."""
    logging.basicConfig(
        level=level if main_process else logging.WARNING, format=LOG_FORMAT, datefmt="%H:%M:%S", force=True
    )
