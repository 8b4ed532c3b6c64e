"""Logging set-up shared by the workflow scripts and the CLI, and the progress-bar convention."""

from __future__ import annotations

import contextlib
import logging
import sys
from pathlib import Path
from typing import Iterable, Iterator

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


# --------------------------------------------------------------------------------------------
# progress bars
# --------------------------------------------------------------------------------------------
@contextlib.contextmanager
def progress_bar(iterable: Iterable | None = None, *, enabled: bool = True, **kwargs) -> Iterator:
    """A tqdm bar shown only on a terminal, with log records routed around it.

    ``disable=None`` (tqdm's own test): the bar is off when its stream (stderr) is not a TTY, so
    SLURM output files, Snakemake rule logs and pipes get no bar updates at all; ``enabled=False``
    turns it off everywhere. While a bar is shown, console log handlers write through
    ``tqdm.write`` (:func:`tqdm.contrib.logging.logging_redirect_tqdm`), so log lines appear
    above the bar instead of breaking it; file handlers (the rule's log) are left alone.
    Yields the bar (iterate over it, or call ``update``).
    """
    from tqdm.auto import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    with tqdm(iterable, disable=None if enabled else True, **kwargs) as bar:
        if bar.disable:  # no bar: leave the handlers as they are
            yield bar
        else:
            with logging_redirect_tqdm():
                yield bar


def track(iterable: Iterable, *, enabled: bool = True, **kwargs) -> Iterator:
    """Iterate over ``iterable`` with a :func:`progress_bar` (terminal only)."""
    with progress_bar(iterable, enabled=enabled, **kwargs) as bar:
        yield from bar
