"""Progress-bar convention (issue 15.3): bars only on a terminal, log lines routed around them,
and training that reports progress through the log where no bar is shown (rule logs, SLURM)."""

from __future__ import annotations

import io
import logging

import numpy as np
import pytest

from sharpgen.logutil import progress_bar, track


class Terminal(io.StringIO):
    def isatty(self):
        return True


def _console_handlers():
    return [h for h in logging.getLogger().handlers
            if type(h) is logging.StreamHandler]  # noqa: E721 -- not FileHandler, not tqdm's


def test_no_bar_when_the_stream_is_not_a_terminal():
    out = io.StringIO()
    assert list(track(range(50), file=out, desc="x")) == list(range(50))
    assert out.getvalue() == ""  # a rule log / SLURM file gets nothing at all
    with progress_bar(total=3, file=Terminal(), enabled=False) as bar:
        assert bar.disable


def test_bar_on_a_terminal_and_logging_routed_around_it(monkeypatch):
    root = logging.getLogger()
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    monkeypatch.setattr(root, "handlers", [handler])
    monkeypatch.setattr("sys.stderr", stream)  # the console handler writes where the bar does
    term = Terminal()
    with progress_bar(total=3, file=term, desc="work") as bar:
        assert not bar.disable
        assert handler not in root.handlers  # console output goes through tqdm.write
        logging.getLogger("sharpgen.x").warning("a message during the bar")
        bar.update(3)
    assert root.handlers == [handler]  # restored afterwards
    assert "work" in term.getvalue() and "3/3" in term.getvalue()
    assert "a message during the bar" in stream.getvalue()


def test_gan_training_logs_every_log_every_steps_without_a_bar(tmp_path, caplog, capfd):
    """Rule logs and SLURM output (stderr not a terminal): no bar updates, one log line per
    ``log_every`` steps instead."""
    from sharpgen import gan
    from sharpgen.gan import GanConfig

    patches = np.tanh(np.random.default_rng(0).standard_normal((16, 32, 32))).astype(np.float32)
    cfg = GanConfig.from_dict(dict(arch="stable", steps=6, batch_size=8, log_every=2, sample_every=6,
                                   checkpoint_every=6, keep_checkpoints=1, device="cpu", seed=1,
                                   structure=[]))
    with caplog.at_level(logging.INFO, logger="sharpgen"):
        gan.train_gan(patches, cfg, checkpoint_root=tmp_path / "ck", generator_path=tmp_path / "g.pt",
                      log_csv=tmp_path / "log.csv", data_id="t", threads=1, progress=True)
    steps = [r.getMessage().split()[1] for r in caplog.records if r.getMessage().startswith("step ")]
    assert steps == ["2/6", "4/6", "6/6"]
    err = capfd.readouterr().err
    assert "\r" not in err and "it/s" not in err and "step/s" not in err


def test_simsiam_training_shows_no_bar_in_a_log(tmp_path, capfd, caplog):
    ssl = pytest.importorskip("sharpgen.ssl")
    x = np.tanh(np.random.default_rng(1).standard_normal((16, 32, 32))).astype(np.float32)
    cfg = {"width": 4, "depth": [1, 1], "proj_hidden": 16, "dim": 8, "pred_hidden": 4, "epochs": 2,
           "batch_size": 8, "device": "cpu", "collapse": {"min_std_ratio": 0.0, "min_effective_rank": 0.0}}
    with caplog.at_level(logging.INFO, logger="sharpgen"):
        ssl.train_simsiam(x, cfg, tmp_path / "ck", threads=1)
    assert sum("ssl epoch" in r.getMessage() for r in caplog.records) == 2
    err = capfd.readouterr().err
    assert "\r" not in err and "simsiam epoch" not in err
