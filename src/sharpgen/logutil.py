"""Logging set-up shared by the workflow scripts and the CLI."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


def setup_logging(log_file: str | Path | None = None, level: int = logging.INFO) -> logging.Logger:
    """Log to stderr and, if given, to ``log_file`` (the rule's ``log:``), replacing handlers.

    Also routes Python warnings into the log and installs a ``sys.excepthook`` that writes an
    uncaught exception's traceback through the logger, so a failing workflow script's traceback
    lands in its rule's log file (and still on stderr). Returns the root logger.
    """
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file is not None:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file, mode="w"))
    for h in handlers:
        h.setFormatter(logging.Formatter(FORMAT))
        root.addHandler(h)
    root.setLevel(level)
    logging.captureWarnings(True)
    sys.excepthook = _log_uncaught
    return root


def _log_uncaught(exc_type, exc, tb) -> None:
    """Log an uncaught exception with its traceback (KeyboardInterrupt keeps the default)."""
    if issubclass(exc_type, KeyboardInterrupt):
        sys.__excepthook__(exc_type, exc, tb)
        return
    logging.getLogger("sharpgen").critical("uncaught %s: %s", exc_type.__name__, exc,
                                           exc_info=(exc_type, exc, tb))
    for h in logging.getLogger().handlers:
        h.flush()
