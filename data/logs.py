"""The one logging format of DistinctAD (every command calls ``init_logger`` once)."""

from __future__ import annotations

import logging
import os

FORMAT = "[distinctad] %(asctime)s %(levelname)s %(name)s: %(message)s"
_warned: set[str] = set()


def init_logger(level: int | str = logging.INFO, rank: int | None = None) -> None:
    """Configure the root logger; ranks other than 0 only show warnings and errors."""
    if rank is None:
        rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(format=FORMAT, level=level if rank == 0 else logging.WARNING, force=True)
    for handler in logging.getLogger().handlers:
        handler.addFilter(_quiet_root_info)


def _quiet_root_info(record: logging.LogRecord) -> bool:
    """Drop INFO chatter that libraries (open_clip) send through the root logger; keep their warnings."""
    return record.name != "root" or record.levelno >= logging.WARNING


def warn_once(logger: logging.Logger, message: str) -> None:
    """Log ``message`` as a warning the first time it is seen in this process."""
    if message not in _warned:
        _warned.add(message)
        logger.warning(message)
