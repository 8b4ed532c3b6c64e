"""Data-parallel training on several devices (GAN and SimSiam; docs/cluster.md, "More than one
GPU").

A training stage with ``devices: N > 1`` runs as N processes, one per device, started by
``torchrun`` (:func:`launch`; ``torch.distributed.run``, single node, ``--standalone``). Each
process calls the same stage function (:func:`worker_main`) and learns its place from the
variables torchrun sets (:func:`from_env`): ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``. The
processes join one group (NCCL on GPUs, gloo on the CPU: :func:`setup`).

How the work is split, so that N processes follow the one-process trajectory:

* every rank draws the *global* batch (indices, latents, augmentation parameters) from the same
  seeded generator, then keeps its own rows (:func:`shard_rows`), so the union of the shards is
  exactly the batch one process would train on and the random streams stay in step;
* gradients are averaged over the ranks before every optimiser step: the GAN calls
  :func:`average_gradients` (the loop has a frozen-discriminator generator step, a lazy R1
  penalty and a path-length penalty, which take gradients of gradients: patterns torch's
  ``DistributedDataParallel`` wrapper does not support, so the GAN averages explicitly, as
  NVIDIA's StyleGAN2-ADA does); SimSiam, one forward and one backward per step, is wrapped in
  ``DistributedDataParallel`` (on GPUs with ``SyncBatchNorm``, so batch statistics are those of
  the global batch; gloo on the CPU has no SyncBatchNorm and normalises each shard alone);
* rank 0 alone writes: checkpoint folder lock, checkpoints, CSV log, sample grids, final outputs.
  Every rank resumes from the checkpoint rank 0 picked (:func:`broadcast_object`).
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import torch

logger = logging.getLogger(__name__)


class DistributedError(RuntimeError):
    """A multi-process training could not start or one of its processes failed."""


@dataclass(frozen=True)
class Dist:
    """This process's place among the training processes (one process: rank 0 of 1)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


SINGLE = Dist()


def from_env(env: Mapping[str, str] | None = None) -> Dist:
    """The :class:`Dist` described by torchrun's ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``
    (:data:`SINGLE` when they are not set)."""
    env = os.environ if env is None else env
    if "WORLD_SIZE" not in env:
        return SINGLE
    try:
        d = Dist(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", env["RANK"])))
    except (KeyError, ValueError) as err:
        raise DistributedError(f"malformed torchrun environment (RANK/WORLD_SIZE/LOCAL_RANK): {err}") from None
    if not 0 <= d.rank < d.world_size:
        raise DistributedError(f"RANK {d.rank} is outside WORLD_SIZE {d.world_size}")
    return d


def setup(requested: str, *, key: str, threads: int | None = None,
          log: logging.Logger | None = None) -> tuple[Dist, torch.device]:
    """Device of this process and, under torchrun, its process group.

    One process: :func:`sharpgen.training.setup_device` unchanged. N processes: the device
    ``requested`` (setting ``key``) resolves as usual; a CUDA device becomes ``cuda:LOCAL_RANK``;
    the group is NCCL on CUDA, gloo on the CPU. ``threads`` are this process's CPU threads.
    """
    from sharpgen import training

    dist = from_env()
    if not dist.enabled:
        return dist, training.setup_device(requested, key=key, threads=threads, log=log)
    device = training.resolve_device(requested, key=key)
    if device.type == "cuda":
        n = torch.cuda.device_count()
        if dist.local_rank >= n:
            raise DistributedError(f"{key}: process {dist.rank} wants GPU {dist.local_rank} but "
                                   f"this node has {n}; lower the device count")
        torch.cuda.set_device(dist.local_rank)
        requested = f"cuda:{dist.local_rank}"
    device = training.setup_device(requested, key=key, threads=threads, log=log)
    if not torch.distributed.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        torch.distributed.init_process_group(backend)
    (log or logger).info("%s: process %d of %d (%s backend)", key, dist.rank, dist.world_size,
                         torch.distributed.get_backend())
    return dist, device


def shutdown() -> None:
    """Leave the process group (no-op without one)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


# --------------------------------------------------------------------------------------------
# splitting a batch and combining results
# --------------------------------------------------------------------------------------------


def shard_rows(batch: int, dist: Dist, group: int = 1, device: torch.device | str = "cpu"
               ) -> torch.Tensor | None:
    """Rows of a global batch of ``batch`` samples that rank ``dist.rank`` trains on: (batch /
    world_size,) int64, or None for one process (all rows).

    ``group`` > 1 keeps the GAN discriminator's minibatch-standard-deviation groups whole: that
    layer groups samples ``i, i + B/g, i + 2B/g, ...`` of a batch of B (view (g, B/g)), so rank r
    takes columns ``r*B/(g*N) .. (r+1)*B/(g*N)`` of that view and its local batch, viewed the
    same way, holds complete global groups. Raises ValueError when the batch does not split.
    """
    if not dist.enabled:
        return None
    n = dist.world_size
    if batch % (group * n):
        raise ValueError(f"a batch of {batch} does not split into {n} equal shards"
                         + (f" of whole groups of {group}" if group > 1 else "")
                         + f": use a batch size divisible by {group * n}")
    rows = torch.arange(batch, device=device).view(group, n, batch // (group * n))[:, dist.rank]
    return rows.reshape(-1)


def take(t: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
    """``t[rows]`` along the first axis (``t`` itself when ``rows`` is None)."""
    return t if rows is None else t.index_select(0, rows.to(t.device))


def average_gradients(params: Iterable[torch.nn.Parameter], dist: Dist) -> None:
    """Replace each parameter's ``.grad`` by its mean over the ranks (one flat all-reduce).

    Parameters without a gradient are skipped; every rank has the same ones, since every rank
    runs the same code on equally sized shards. No-op for one process."""
    if not dist.enabled:
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    torch.distributed.all_reduce(flat)
    flat.div_(dist.world_size)
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def mean_over_ranks(t: torch.Tensor, dist: Dist) -> torch.Tensor:
    """Mean of ``t`` over the ranks (a new tensor; ``t`` itself for one process)."""
    if not dist.enabled:
        return t
    out = t.detach().clone()
    torch.distributed.all_reduce(out)
    return out.div_(dist.world_size)


def broadcast_object(obj: Any, dist: Dist) -> Any:
    """Rank 0's ``obj`` on every rank (a picklable object; ``obj`` itself for one process)."""
    if not dist.enabled:
        return obj
    box = [obj if dist.is_main else None]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def threads_per_process(threads: int | None, dist: Dist | None = None) -> int | None:
    """This process's share of a job's ``threads`` CPU threads (at least 1; None stays None)."""
    if not threads:
        return None
    dist = from_env() if dist is None else dist
    return max(1, int(threads) // dist.world_size)


def resume_checkpoint(folder: str | os.PathLike, max_step: int, dist: Dist, *,
                      required: tuple[str, ...] = (), prefix: str = "step") -> tuple[Path, dict] | None:
    """The checkpoint to resume from, the same on every rank: rank 0 picks it with
    :func:`sharpgen.training.find_resume_checkpoint` (which may quarantine unreadable files,
    so only rank 0 looks), the others load the path it broadcasts. ``(path, state)`` or None."""
    from sharpgen import training

    found = (training.find_resume_checkpoint(folder, max_step, required=required, prefix=prefix)
             if dist.is_main else None)
    chosen = broadcast_object(None if found is None else str(found[1]), dist)
    if chosen is None:
        return None
    return Path(chosen), (found[2] if found is not None else training.load_checkpoint(chosen))


def main_only(dist: Dist, ctx: contextlib.AbstractContextManager) -> contextlib.AbstractContextManager:
    """``ctx`` on rank 0, a no-op context elsewhere (e.g. the checkpoint folder lock)."""
    return ctx if dist.is_main else contextlib.nullcontext()


# --------------------------------------------------------------------------------------------
# launching N processes
# --------------------------------------------------------------------------------------------


def launch_if_needed(target: str, kwargs: Mapping[str, Any], devices: int) -> bool:
    """For a stage function ``target`` (``"module:function"``) called with ``kwargs``: when
    ``devices`` > 1 and this process is not one of torchrun's, :func:`launch` ``devices``
    processes that each call it, wait, and return True (the caller returns; rank 0 wrote the
    outputs). Otherwise return False: the caller trains here (one process, or one rank)."""
    devices = int(devices)
    if devices < 1:
        raise ValueError(f"device count must be >= 1, got {devices}")
    if devices == 1 or from_env().enabled:
        return False
    launch(target, kwargs, nproc=devices)
    return True


def resolve(target: str) -> Callable[..., Any]:
    """``"package.module:function"`` -> the function."""
    module, _, name = target.partition(":")
    if not module or not name:
        raise ValueError(f"stage target {target!r} is not 'module:function'")
    return getattr(importlib.import_module(module), name)


def torchrun_command(spec_path: str | os.PathLike, nproc: int) -> list[str]:
    """The torchrun command line that runs :func:`worker_main` on ``spec_path`` in ``nproc``
    processes on this node (``--standalone``: a free local rendezvous port)."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1",
            "--nproc-per-node", str(int(nproc)), "-m", "sharpgen.distributed", str(spec_path)]


def launch(target: str, kwargs: Mapping[str, Any], *, nproc: int) -> None:
    """Run ``target(**kwargs)`` in ``nproc`` torchrun processes and wait for them.

    ``kwargs`` must be JSON-serialisable (paths, config dicts). The processes' output (each line
    prefixed by its rank) is forwarded to this process's log, so it lands in the rule's log.
    A failure of any process stops all of them (torchrun's agent) and raises
    :class:`DistributedError` with the exit status and the last lines of output. A kill of
    this process (SIGTERM/SIGINT, e.g. from SLURM) is passed on to the whole process group.
    """
    with tempfile.TemporaryDirectory(prefix="sharpgen-ddp-") as tmp:
        spec = Path(tmp) / "spec.json"
        spec.write_text(json.dumps({"target": target, "kwargs": dict(kwargs)}))
        cmd = torchrun_command(spec, nproc)
        env = dict(os.environ)
        share = threads_per_process(kwargs.get("threads") or 1, Dist(0, int(nproc), 0))
        env.setdefault("OMP_NUM_THREADS", str(share))
        logger.info("starting %d training processes: %s", nproc, " ".join(cmd))
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env=env, start_new_session=True)
        tail: list[str] = []
        errors: list[str] = []  # the processes' own CRITICAL lines: why they failed
        previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}

        def _forward(signum, _frame):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signum)

        for s in previous:
            with contextlib.suppress(ValueError):  # not the main thread: leave handlers alone
                signal.signal(s, _forward)
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                line = line.rstrip("\n")
                tail = (tail + [line])[-20:]
                if line.startswith("[rank") and " CRITICAL " in line:
                    errors.append(line)
                logger.info("%s", line)
            rc = proc.wait()
        except BaseException:
            _stop(proc)
            raise
        finally:
            for s, h in previous.items():
                with contextlib.suppress(ValueError, TypeError):
                    signal.signal(s, h)
        if rc != 0:
            raise DistributedError(
                f"{nproc}-process training {target} failed (torchrun exit status {rc})"
                + (": " + "\n".join(errors) if errors else "")
                + "\nlast output lines:\n" + "\n".join(tail))


def _stop(proc: subprocess.Popen, grace_s: float = 30.0) -> None:
    """Stop torchrun: SIGTERM (its agent stops the workers), SIGKILL after ``grace_s``."""
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, None)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def die_with_parent() -> None:
    """Linux: have the kernel SIGKILL this process when its parent (the torchrun agent) dies.

    torchrun starts each worker in a session of its own, so a hard kill of the agent (SIGKILL,
    OOM killer) would leave the workers training on, holding the checkpoint lock and the GPUs;
    with this they go down with it and a rerun resumes. No-op elsewhere."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    parent = os.getppid()
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before the call took effect
        os._exit(1)


def worker_main(argv: list[str] | None = None) -> int:
    """Entry point of one torchrun process: ``python -m sharpgen.distributed SPEC.json``."""
    from sharpgen.logutil import FORMAT

    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m sharpgen.distributed SPEC.json (started by torchrun)", file=sys.stderr)
        return 2
    die_with_parent()
    spec = json.loads(Path(argv[0]).read_text())
    dist = from_env()
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter(f"[rank {dist.rank}] {FORMAT}"))
    root.addHandler(handler)
    # rank 0 tells the story; the others only speak up about problems
    root.setLevel(logging.INFO if dist.is_main else logging.WARNING)
    logging.captureWarnings(True)
    try:
        resolve(spec["target"])(**spec["kwargs"])
    except BaseException as err:
        logging.getLogger("sharpgen").critical("%s failed: %s: %s", spec["target"],
                                               type(err).__name__, err, exc_info=True)
        raise
    finally:
        shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(worker_main())
