"""Training utilities shared by the GAN (:mod:`sharpgen.gan`) and SimSiam (:mod:`sharpgen.ssl`)
loops, and device selection for every torch stage.

* **Device** -- :func:`setup_device` resolves ``auto | cpu | cuda[:N]``, refuses a job whose
  scheduler allocated GPUs when torch sees no CUDA (:func:`resolve_device`), sets threads and the
  determinism flags (:func:`configure_determinism`) and logs the device with the GPU name.
  :func:`autocast` gives bf16 autocast only on GPUs that run it well (:func:`use_bf16`:
  compute capability >= 8.0), fp32 elsewhere.
* **Checkpoint folder** -- :func:`checkpoint_folder` (``root/<hash of the trajectory-defining
  settings>``) and :func:`folder_lock`, an exclusive ``fcntl.lockf`` lock on
  ``<folder>/train.lock`` (works on NFS; on Lustre with the ``flock`` mount option) holding the
  holder's host and pid, taken for the whole life of a training.
* **Checkpoints** -- ``<prefix>_<8-digit step>.pt`` files: :func:`save_checkpoint` (atomic,
  byte-reproducible via :func:`write_torch`, then :func:`prune_checkpoints` below the current
  step only), :func:`load_checkpoint` (always to the CPU), :func:`find_resume_checkpoint`
  (newest readable one; unreadable files renamed ``*.corrupt`` with a warning),
  :func:`check_meta`.
* **RNG state** -- :func:`rng_state` / :func:`restore_rng_state` (CPU tensors; a checkpoint from
  another device type reseeds the training generators from (seed, step) with a warning),
  :func:`load_optimizer_state` (Adam/SGD moments onto the parameters' device, ``step`` on the CPU).
* **CSV log** -- :class:`CsvLog`: the live log next to the checkpoints, truncated to the resumed
  step on resume, copied to the published path at the end.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import fcntl
import io
import json
import logging
import os
import platform
import re
import shutil
import socket
import time
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch

from sharpgen.atomic import atomic_path, translate_disk_full, write_stream
from sharpgen.config import section_hash

logger = logging.getLogger(__name__)

DEVICE_NAMES = ("auto", "cpu", "cuda")
#: environment variables through which a scheduler hands GPUs to a job
GPU_ALLOCATION_VARS = ("SLURM_JOB_GPUS", "SLURM_STEP_GPUS", "CUDA_VISIBLE_DEVICES")
LOCK_NAME = "train.lock"
#: cuBLAS workspace setting required for deterministic cuBLAS results (CUDA >= 10.2)
CUBLAS_WORKSPACE = ":4096:8"


class TrainingError(RuntimeError):
    """Base class of the errors raised here (messages name the file, folder or setting)."""


class DeviceError(TrainingError):
    """The requested or allocated device cannot be used (the message says why and how to fix)."""


class CheckpointLockError(TrainingError):
    """Another training holds the checkpoint folder (the message names its host and pid)."""


class CheckpointMismatchError(TrainingError):
    """A checkpoint was written for another architecture, configuration or data set."""


# --------------------------------------------------------------------------------------------
# Devices
# --------------------------------------------------------------------------------------------


def scheduler_gpus(env: Mapping[str, str]) -> dict[str, str]:
    """GPU allocations a scheduler made to this job: ``{variable: value}`` for each of
    :data:`GPU_ALLOCATION_VARS` that is set to something other than ``""``, ``"-1"`` or SLURM's
    ``"NoDevFiles"`` (those mean: no GPU)."""
    out = {}
    for name in GPU_ALLOCATION_VARS:
        value = str(env.get(name, "")).strip()
        if value and value not in ("-1", "NoDevFiles"):
            out[name] = value
    return out


def _no_cuda_reason(cuda_version: str | None) -> str:
    """Why torch sees no CUDA device, from ``torch.version.cuda`` (None for a CPU build)."""
    if cuda_version is None:
        return (f"this torch ({torch.__version__}) is a CPU-only build (torch.version.cuda is "
                "None)")
    return (f"this torch ({torch.__version__}) is built for CUDA {cuda_version} but finds no "
            "usable GPU (no or too old NVIDIA driver, or the GPU is hidden from the job)")


def resolve_device(requested: str, *, key: str, env: Mapping[str, str] | None = None,
                   cuda_available: bool | None = None,
                   cuda_version: str | None | bool = False) -> torch.device:
    """``auto | cpu | cuda | cuda:N`` (setting ``key``) -> the torch device to use.

    ``auto`` is CUDA when available, else the CPU -- except when the scheduler allocated GPUs
    to the job (:func:`scheduler_gpus`): then a missing CUDA is a :class:`DeviceError`, because
    a GPU job silently training on the CPU wastes the allocation (set ``key: cpu`` to do that on
    purpose). ``env``, ``cuda_available`` and ``cuda_version`` default to the real environment,
    ``torch.cuda.is_available()`` and ``torch.version.cuda`` (tests pass their own).
    """
    name = str(requested).strip().lower()
    if not (name in DEVICE_NAMES or re.fullmatch(r"cuda:\d+", name)):
        raise DeviceError(f"{key} {requested!r} is not one of auto | cpu | cuda | cuda:N")
    if name == "cpu":
        return torch.device("cpu")
    env = os.environ if env is None else env
    available = torch.cuda.is_available() if cuda_available is None else cuda_available
    version = torch.version.cuda if cuda_version is False else cuda_version
    if available:
        return torch.device("cuda" if name == "auto" else name)
    allocated = scheduler_gpus(env)
    if name == "auto" and not allocated:
        return torch.device("cpu")
    what = (f"{key} is {requested!r}" if name != "auto" else
            f"{key} is 'auto' and the scheduler allocated GPU(s) to this job")
    alloc = ", ".join(f"{k}={v}" for k, v in allocated.items()) or "none"
    raise DeviceError(
        f"{what} (allocation: {alloc}), but torch sees no CUDA device: {_no_cuda_reason(version)}. "
        "Fix: install the CUDA build of torch that matches the driver into .venv (README, "
        f"'Install details and GPUs'; check with `python -c \"import torch; "
        f"print(torch.cuda.is_available())\"` on a GPU node), or set {key}: cpu to run on the "
        "CPU on purpose")


def use_bf16(capability: tuple[int, int] | None) -> bool:
    """Whether to train in bf16 autocast on a GPU of compute ``capability`` (major, minor).

    True from Ampere (8.0) on, whose tensor cores run bf16 natively; older GPUs (and the CPU,
    ``None``) train in fp32, since bf16 there is emulated and slower, not faster."""
    return capability is not None and tuple(capability) >= (8, 0)


def device_capability(device: torch.device) -> tuple[int, int] | None:
    """Compute capability (major, minor) of a CUDA ``device``; None for any other device."""
    if device.type != "cuda":
        return None
    return tuple(torch.cuda.get_device_capability(device))


def autocast(device: torch.device) -> torch.autocast:
    """The autocast context for training on ``device``: bf16 on CUDA GPUs with compute
    capability >= 8.0 (:func:`use_bf16`), disabled (fp32) everywhere else. Reusable, not
    re-entrant."""
    on = use_bf16(device_capability(device))
    return torch.autocast(device.type if device.type in ("cuda", "cpu") else "cpu",
                          dtype=torch.bfloat16, enabled=on)


def configure_determinism(device: torch.device) -> None:
    """Ask torch for deterministic kernels: ``use_deterministic_algorithms(True, warn_only=True)``
    and, on CUDA, cuDNN deterministic (no benchmark autotuning) and cuBLAS's fixed workspace
    (``CUBLAS_WORKSPACE_CONFIG``, set unless the user set it; it must precede the first cuBLAS
    call, which is why :func:`setup_device` calls this before any model is built)."""
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(True, warn_only=True)


def describe_device(device: torch.device) -> str:
    """One line naming the device: GPU name, capability, memory and precision on CUDA; the
    thread count on the CPU."""
    if device.type == "cuda":
        idx = device.index if device.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(idx)
        cap = (props.major, props.minor)
        prec = "bf16 autocast" if use_bf16(cap) else "fp32 (bf16 needs compute capability >= 8.0)"
        return (f"cuda:{idx} ({props.name}, compute capability {cap[0]}.{cap[1]}, "
                f"{props.total_memory / 2**30:.0f} GiB, {prec}; torch {torch.__version__}, "
                f"CUDA {torch.version.cuda})")
    extra = ""
    if device.type == "cpu" and not torch.cuda.is_available():
        extra = ", no CUDA: " + ("CPU-only torch build" if torch.version.cuda is None
                                 else "no usable GPU")
    return (f"{device.type} ({torch.get_num_threads()} threads{extra}; torch {torch.__version__}; "
            f"{describe_cpu()})")


def describe_cpu() -> str:
    """The host CPU as far as it decides CPU numerics: model name, x86 family/model, the
    instruction set torch's kernels dispatch to and the L2/L3 cache sizes (oneDNN and MKL pick
    kernels and blocking by instruction set and caches, so bit-identical CPU results need the
    same CPU model too). Parts that cannot be read (another OS) are left out."""
    info: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if not line.strip():
                    break  # the first processor is enough
                key, _, value = line.partition(":")
                info.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    parts = [info.get("model name") or platform.processor() or platform.machine() or "unknown"]
    if "cpu family" in info and "model" in info:
        parts.append(f"family {info['cpu family']} model {info['model']}")
    parts.append(f"{torch.backends.cpu.get_cpu_capability()} kernels")
    caches = []
    for index in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        try:
            level, size, kind = ((index / f).read_text().strip() for f in ("level", "size", "type"))
        except OSError:
            continue
        if level in ("2", "3") and kind in ("Unified", "Data"):
            caches.append(f"L{level} {size}")
    return "CPU " + ", ".join(parts + ([" / ".join(caches)] if caches else []))


def setup_device(requested: str = "auto", *, key: str, threads: int | None = None,
                 deterministic: bool = True, log: logging.Logger | None = None) -> torch.device:
    """Pick, prepare and log the device of a torch stage (training, traversal, embedding).

    ``requested`` is the config value (``auto | cpu | cuda | cuda:N``) of setting ``key`` (named
    in errors, e.g. ``"gan.device"``); see :func:`resolve_device` for when it refuses. Sets
    ``torch.set_num_threads(threads)`` when given, the determinism flags
    (:func:`configure_determinism`) unless ``deterministic=False``, and logs
    :func:`describe_device` at INFO.
    """
    device = resolve_device(requested, key=key)
    if threads:
        torch.set_num_threads(int(threads))
    if deterministic:
        configure_determinism(device)
    (log or logger).info("%s: running on %s", key, describe_device(device))
    return device


# --------------------------------------------------------------------------------------------
# Checkpoint folder and its lock
# --------------------------------------------------------------------------------------------


def checkpoint_folder(root: str | os.PathLike, *sections: Any) -> Path:
    """``root/<12-hex hash>`` of ``sections`` (the settings that define the training trajectory
    and the training data), so runs with other settings never share checkpoints."""
    return Path(root) / section_hash(*sections)


#: folders locked by this process (POSIX locks do not conflict within one process)
_HELD: set[str] = set()


def _holder(fd: int) -> str:
    """The holder description stored in an open lock file, as text for an error message."""
    try:
        raw = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
        info = json.loads(raw)
        return (f"{info.get('what', 'a training')} on host {info.get('host')!s}, pid "
                f"{info.get('pid')}, since {info.get('since')}")
    except (OSError, ValueError, AttributeError):
        return "an unknown process (the lock file names no holder yet)"


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike, what: str = "training") -> Iterator[Path]:
    """Hold an exclusive lock on checkpoint ``folder`` for the duration of the ``with`` block.

    The lock is ``fcntl.lockf`` on ``<folder>/train.lock`` (POSIX record locks: honoured across
    NFS clients and on Lustre mounted with ``flock``), released by the kernel when the process
    dies, so a killed training never blocks its rerun. The file holds the holder's host, pid and
    start time; a second training (another process, or another call in this one) gets a
    :class:`CheckpointLockError` naming them. A file system without lock support is logged as a
    warning and the training proceeds unlocked. Yields the lock file's path.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    key = str(folder.resolve())
    if key in _HELD:
        raise CheckpointLockError(
            f"checkpoint folder {folder} is already in use by another training in this process "
            f"(host {socket.gethostname()}, pid {os.getpid()}); two trainings must not share a "
            "checkpoint folder")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    locked = False
    try:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            locked = True
        except OSError as err:
            if err.errno in (errno.EACCES, errno.EAGAIN):
                raise CheckpointLockError(
                    f"checkpoint folder {folder} is in use by {_holder(fd)} (lock file {path}); "
                    "two trainings with the same settings must not share a checkpoint folder: "
                    "wait for that one to finish or stop it, or give this run another "
                    "checkpoint_dir. A dead holder's lock is released automatically (on NFS "
                    "once the server notices, at most its lease time)") from None
            logger.warning("cannot lock checkpoint folder %s (%s): this file system has no "
                           "working POSIX locks, so a second training on the same folder would "
                           "not be detected", folder, err)
        info = {"what": what, "host": socket.gethostname(), "pid": os.getpid(),
                "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        os.fsync(fd)
        _HELD.add(key)
        try:
            yield path
        finally:
            _HELD.discard(key)
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
    finally:
        if locked:
            with contextlib.suppress(OSError):
                fcntl.lockf(fd, fcntl.LOCK_UN)
        os.close(fd)


# --------------------------------------------------------------------------------------------
# Checkpoint files
# --------------------------------------------------------------------------------------------


def checkpoint_path(folder: str | os.PathLike, step: int, prefix: str = "step") -> Path:
    """``folder/<prefix>_<step, 8 digits>.pt``."""
    return Path(folder) / f"{prefix}_{int(step):08d}.pt"


def list_checkpoints(folder: str | os.PathLike, prefix: str = "step") -> list[tuple[int, Path]]:
    """``[(step, path), ...]`` of the checkpoint files in ``folder``, oldest first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    pat = re.compile(rf"^{re.escape(prefix)}_(\d{{8}})\.pt$")
    return sorted((int(m.group(1)), p) for p in folder.iterdir() if (m := pat.match(p.name)))


def prune_checkpoints(folder: str | os.PathLike, step: int, keep: int,
                      prefix: str = "step") -> list[Path]:
    """Delete checkpoints older than ``step`` beyond the newest ``keep - 1`` of them (the one
    at ``step`` is the ``keep``-th); return the deleted paths.

    Files at higher steps (left by a longer run with the same settings) are never touched, so a
    freshly written checkpoint is never the one pruned."""
    older = [p for s, p in list_checkpoints(folder, prefix) if s < step]
    doomed = older[:max(0, len(older) - max(0, int(keep) - 1))]
    for p in doomed:
        p.unlink(missing_ok=True)
    return doomed


def write_torch(path: str | os.PathLike, obj: Any) -> None:
    """``torch.save(obj)`` to ``path`` atomically, durably and byte-reproducibly: through a file
    handle, so the zip archive inside is always named ``archive`` (saving to a path names it
    after the random temporary file). A full disk raises :class:`sharpgen.atomic.DiskFullError`
    naming the folder."""
    write_stream(path, lambda fh: torch.save(obj, fh), suffix=".pt")


def save_checkpoint(folder: str | os.PathLike, step: int, state: Mapping[str, Any], *, keep: int,
                    prefix: str = "step") -> Path:
    """Write ``state`` to ``folder/<prefix>_<step>.pt`` atomically and byte-reproducibly
    (:func:`write_torch`), then :func:`prune_checkpoints`; return its path.
    A full disk raises :class:`sharpgen.atomic.DiskFullError` naming the folder."""
    path = checkpoint_path(folder, step, prefix)
    write_torch(path, dict(state))
    prune_checkpoints(folder, step, keep, prefix)
    return path


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Load a checkpoint onto the CPU (``weights_only=True``): RNG states must be CPU tensors
    and the caller moves the weights to its device (``load_state_dict`` copies into them)."""
    return torch.load(path, map_location="cpu", weights_only=True)


def quarantine(path: str | os.PathLike, err: BaseException) -> Path:
    """Rename an unreadable checkpoint to ``<name>.corrupt`` (kept for inspection, never read
    again) with a warning naming the file and the error; return the new path."""
    path = Path(path)
    dest = path.with_name(path.name + ".corrupt")
    os.replace(path, dest)
    logger.warning("checkpoint %s is unreadable (%s: %s); renamed it to %s", path,
                   type(err).__name__, str(err)[:300], dest.name)
    return dest


def find_resume_checkpoint(folder: str | os.PathLike, max_step: int, *,
                           required: Sequence[str] = (), prefix: str = "step"
                           ) -> tuple[int, Path, dict] | None:
    """The newest readable checkpoint at a step <= ``max_step``: ``(step, path, state)``, or
    None when there is none.

    A file that cannot be loaded, is not a dict or lacks a ``required`` key is renamed to
    ``*.corrupt`` (:func:`quarantine`) and the next older one is tried; when every candidate
    was unreadable a warning names them all before the caller starts over. Checkpoints past
    ``max_step`` are left alone (logged)."""
    found = list_checkpoints(folder, prefix)
    later = [p.name for s, p in found if s > max_step]
    if later:
        logger.info("ignoring checkpoints past step %d in %s: %s", max_step, folder,
                    ", ".join(later))
    bad: list[Path] = []
    for step, path in reversed([(s, p) for s, p in found if s <= max_step]):
        try:
            state = load_checkpoint(path)
            if not isinstance(state, dict):
                raise TypeError(f"holds a {type(state).__name__}, not a dict")
            missing = [k for k in required if k not in state]
            if missing:
                raise KeyError(f"missing keys {missing}")
        except Exception as err:  # damaged, truncated or foreign file: never resume from it
            bad.append(quarantine(path, err))
            continue
        return step, path, state
    if bad:
        logger.warning("EVERY checkpoint in %s was unreadable (%s, now *.corrupt): starting "
                       "over from step 0", folder, ", ".join(p.name for p in bad))
    return None


def check_meta(path: str | os.PathLike, meta: Mapping[str, Any], expected: Mapping[str, Any],
               error: type[Exception] = CheckpointMismatchError) -> None:
    """Raise ``error`` (default :class:`CheckpointMismatchError`) naming ``path`` and every key
    whose value in the checkpoint's ``meta`` differs from ``expected``."""
    diffs = [f"{k}: checkpoint {meta.get(k)!r} != current {v!r}"
             for k, v in expected.items() if meta.get(k) != v]
    if diffs:
        raise error(
            f"checkpoint {path} was written for another data set, architecture or configuration "
            f"and cannot be resumed ({'; '.join(diffs)}); delete it or change checkpoint_dir")


# --------------------------------------------------------------------------------------------
# Random state and optimiser state
# --------------------------------------------------------------------------------------------


def derived_seed(*values: int) -> int:
    """A 63-bit seed derived from integers (e.g. ``(seed, step)``) with numpy's SeedSequence:
    well mixed, identical on every platform."""
    a, b = np.random.SeedSequence([int(v) for v in values]).generate_state(2, np.uint32)
    return (int(a) << 31) ^ int(b)


def rng_state(device: torch.device, generators: Mapping[str, torch.Generator]) -> dict:
    """Snapshot of the random streams as CPU tensors: ``{"torch": CPU RNG, "cuda": [per-GPU
    states] (CUDA only), <name>: state of each generator, "devices": {name: device type}}``."""
    out: dict[str, Any] = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        out["cuda"] = [s.cpu() for s in torch.cuda.get_rng_state_all()]
    for name, gen in generators.items():
        out[name] = gen.get_state().cpu()
    out["devices"] = {name: gen.device.type for name, gen in generators.items()}
    return out


def _state_device(state: torch.Tensor, recorded: str | None) -> str:
    """Device type a generator state came from: the recorded one, else from its size (CPU
    Mersenne-Twister states are 5056 bytes; CUDA Philox states are 16)."""
    if recorded:
        return str(recorded)
    return "cpu" if state.numel() == torch.Generator().get_state().numel() else "cuda"


def restore_rng_state(rng: Mapping[str, Any], device: torch.device,
                      generators: Mapping[str, torch.Generator], *, seed: int, step: int,
                      source: str | os.PathLike = "checkpoint") -> list[str]:
    """Restore :func:`rng_state`'s snapshot; return what had to be reseeded instead.

    A stream that cannot be restored -- a generator saved on another device type (CPU <-> GPU,
    different state sizes), a missing or incompatible state -- is reseeded deterministically
    from ``(seed, step, index)`` with one warning naming ``source``: the run continues
    reproducibly but no longer equals an uninterrupted run on the original device."""
    reseeded = []
    try:
        torch.set_rng_state(torch.as_tensor(rng["torch"]).cpu())
    except (KeyError, RuntimeError, TypeError, ValueError):
        torch.manual_seed(derived_seed(seed, step, 0))
        reseeded.append("torch CPU RNG")
    if device.type == "cuda":
        saved = list(rng.get("cuda") or [])
        try:
            if len(saved) < torch.cuda.device_count():
                raise ValueError("fewer saved CUDA states than GPUs")
            for i in range(torch.cuda.device_count()):
                torch.cuda.set_rng_state(torch.as_tensor(saved[i]).cpu(), i)
        except (RuntimeError, TypeError, ValueError):
            torch.cuda.manual_seed_all(derived_seed(seed, step, 1))
            reseeded.append("CUDA RNG")
    devices = dict(rng.get("devices") or {})
    for i, (name, gen) in enumerate(generators.items(), start=2):
        state = rng.get(name)
        try:
            if state is None:
                raise KeyError(name)
            state = torch.as_tensor(state).cpu()
            if _state_device(state, devices.get(name)) != gen.device.type:
                raise ValueError("saved on another device type")
            gen.set_state(state)
        except (KeyError, RuntimeError, TypeError, ValueError):
            gen.manual_seed(derived_seed(seed, step, i))
            reseeded.append(f"generator {name!r}")
    if reseeded:
        saved_on = sorted(set(devices.values())) or ["an unrecorded device"]
        logger.warning("resuming %s on %s: %s could not be restored (saved on %s); reseeded "
                       "deterministically from (seed %d, step %d). The run stays reproducible but "
                       "differs from an uninterrupted run on the original device", source,
                       device.type, ", ".join(reseeded), "/".join(saved_on), seed, step)
    return reseeded


def load_optimizer_state(opt: torch.optim.Optimizer, state: Mapping[str, Any]) -> None:
    """``opt.load_state_dict(state)`` for a checkpoint loaded onto the CPU: torch moves the
    moments to each parameter's device and dtype; ``step`` stays a CPU tensor (what torch
    expects unless the optimiser is fused/capturable), moved back there if it was not."""
    opt.load_state_dict(state)
    flags = {id(p): bool(g.get("fused") or g.get("capturable"))
             for g in opt.param_groups for p in g["params"]}
    for p, st in opt.state.items():
        step = st.get("step") if isinstance(st, dict) else None
        if isinstance(step, torch.Tensor) and not flags.get(id(p)) and step.device.type != "cpu":
            st["step"] = step.to("cpu")


def warn_device_change(saved: str | None, device: torch.device, source: str | os.PathLike) -> bool:
    """Log a warning when a checkpoint saved on device type ``saved`` resumes on another
    ``device`` (results then differ from an uninterrupted run); return whether it changed."""
    if saved is None or saved == device.type:
        return False
    logger.warning("resuming %s, written on %s, on %s: the remaining training draws its random "
                   "numbers on another device type and will differ from an uninterrupted %s run",
                   source, saved, device.type, saved)
    return True


# --------------------------------------------------------------------------------------------
# CSV training log
# --------------------------------------------------------------------------------------------


class CsvLog:
    """A training log CSV with ``columns`` whose rows are keyed by the integer column ``key``.

    The live file sits next to the checkpoints; :meth:`restart` keeps the rows up to the resumed
    step (dropping rows of work that was lost, and a row half-written by a crash), :meth:`append`
    adds one row, :meth:`publish` copies the file atomically to the published path.
    """

    def __init__(self, path: str | os.PathLike, columns: Sequence[str], key: str = "step"):
        self.path, self.columns, self.key = Path(path), tuple(columns), key
        if key not in self.columns:
            raise ValueError(f"CsvLog key {key!r} is not one of the columns {self.columns}")

    def _complete(self, row: Mapping[str, Any]) -> bool:
        """A row with every column present and non-empty and an integer key."""
        if any(row.get(c) in (None, "") for c in self.columns) or None in row:
            return False
        return re.fullmatch(r"-?\d+", str(row[self.key]).strip()) is not None

    def rows(self) -> list[dict[str, str]]:
        """The complete rows of the live file ([] if it does not exist)."""
        if not self.path.exists():
            return []
        with open(self.path, newline="") as fh:
            return [r for r in csv.DictReader(fh) if self._complete(r)]

    def restart(self, upto: int | None) -> list[dict[str, str]]:
        """Rewrite the live file (atomically) with its rows whose key is <= ``upto`` (none when
        ``upto`` is None: a fresh start); return them."""
        kept = [] if upto is None else [r for r in self.rows() if int(r[self.key]) <= upto]
        self.rewrite(kept)
        return kept

    def rewrite(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Replace the live file (atomically) by a header and ``rows`` -- e.g. the log a
        checkpoint carries, when that is the authoritative copy."""
        with atomic_path(self.path, suffix=".csv") as tmp:
            with open(tmp, "w", newline="") as fh:
                w = csv.DictWriter(fh, fieldnames=list(self.columns))
                w.writeheader()
                w.writerows({c: r[c] for c in self.columns} for r in rows)

    def append(self, row: Mapping[str, Any]) -> None:
        """Append one row (values formatted as ``csv`` does) in a single write, flushed."""
        buf = io.StringIO()
        csv.writer(buf).writerow([row[c] for c in self.columns])
        with translate_disk_full(self.path), open(self.path, "a", newline="") as fh:
            fh.write(buf.getvalue())

    def publish(self, dest: str | os.PathLike) -> None:
        """Copy the live file to ``dest`` atomically."""
        with atomic_path(dest, suffix=".csv") as tmp:
            shutil.copyfile(self.path, tmp)
