"""Shared training utilities (sharpgen.training, sharpgen.atomic.write_stream): devices, the
checkpoint-folder lock, checkpoint files, RNG state, the CSV log, disk-full errors. CPU, seconds."""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from sharpgen import atomic, training
from sharpgen.training import CheckpointLockError, CsvLog, DeviceError

REPO_ROOT = Path(__file__).resolve().parents[1]
TORCH_DISK_FULL = "[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534"


def _sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# --------------------------------------------------------------------------------------------
# devices
# --------------------------------------------------------------------------------------------
def test_scheduler_gpus_ignores_empty_and_hidden():
    assert training.scheduler_gpus({}) == {}
    assert training.scheduler_gpus({"CUDA_VISIBLE_DEVICES": ""}) == {}
    assert training.scheduler_gpus({"CUDA_VISIBLE_DEVICES": "-1"}) == {}
    assert training.scheduler_gpus({"CUDA_VISIBLE_DEVICES": "NoDevFiles"}) == {}
    env = {"SLURM_JOB_GPUS": "0,1", "SLURM_STEP_GPUS": "1", "CUDA_VISIBLE_DEVICES": "0",
           "SLURM_JOB_ID": "7"}
    assert training.scheduler_gpus(env) == {"SLURM_JOB_GPUS": "0,1", "SLURM_STEP_GPUS": "1",
                                            "CUDA_VISIBLE_DEVICES": "0"}


@pytest.mark.parametrize("var", ["SLURM_JOB_GPUS", "SLURM_STEP_GPUS", "CUDA_VISIBLE_DEVICES"])
def test_allocated_gpu_without_cuda_is_refused(var):
    with pytest.raises(DeviceError) as exc:
        training.resolve_device("auto", key="gan.device", env={var: "0"}, cuda_available=False,
                                cuda_version=None)
    msg = str(exc.value)
    assert f"{var}=0" in msg and "gan.device" in msg
    assert "CPU-only build (torch.version.cuda is None)" in msg
    assert "install the CUDA build of torch" in msg and "gan.device: cpu" in msg
    # a CUDA build without a usable GPU is told apart from a CPU build
    with pytest.raises(DeviceError, match="built for CUDA 12.4 but finds no usable GPU"):
        training.resolve_device("auto", key="ssl.device", env={var: "0"}, cuda_available=False,
                                cuda_version="12.4")


def test_device_choice_without_allocation_and_explicit_cpu():
    none = {"CUDA_VISIBLE_DEVICES": "-1"}
    kw = dict(cuda_available=False, cuda_version=None)
    assert training.resolve_device("auto", key="k", env={}, **kw).type == "cpu"
    assert training.resolve_device("auto", key="k", env=none, **kw).type == "cpu"
    # explicit cpu: allowed even when the scheduler handed out a GPU
    assert training.resolve_device("cpu", key="k", env={"SLURM_JOB_GPUS": "0"}, **kw).type == "cpu"
    with pytest.raises(DeviceError, match=r"k is 'cuda' \(allocation: none\)"):
        training.resolve_device("cuda", key="k", env={}, **kw)
    with pytest.raises(DeviceError, match="not one of auto"):
        training.resolve_device("tpu", key="k", env={}, **kw)
    assert training.resolve_device("auto", key="k", env={}, cuda_available=True).type == "cuda"
    assert training.resolve_device("cuda:1", key="k", env={}, cuda_available=True) == \
        torch.device("cuda:1")


def test_bf16_only_from_compute_capability_8():
    assert not training.use_bf16(None)
    assert not training.use_bf16((7, 5))   # Turing: fp32
    assert not training.use_bf16((6, 0))
    assert training.use_bf16((8, 0))       # Ampere
    assert training.use_bf16((8, 9))
    assert training.use_bf16((9, 0))       # Hopper
    ac = training.autocast(torch.device("cpu"))
    assert not ac._enabled


def test_cuda_determinism_flags(monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", False)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", True)
    was = torch.are_deterministic_algorithms_enabled(), \
        torch.is_deterministic_algorithms_warn_only_enabled()
    try:
        training.configure_determinism(torch.device("cuda"))
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
        assert torch.are_deterministic_algorithms_enabled()
        monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")  # the user's choice is kept
        training.configure_determinism(torch.device("cuda"))
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"
    finally:
        torch.use_deterministic_algorithms(was[0], warn_only=was[1])


def test_setup_device_sets_threads_and_logs(caplog, monkeypatch):
    monkeypatch.delenv("SLURM_JOB_GPUS", raising=False)
    monkeypatch.delenv("SLURM_STEP_GPUS", raising=False)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    before = torch.get_num_threads()
    try:
        with caplog.at_level(logging.INFO, logger="sharpgen.training"):
            dev = training.setup_device("cpu", key="embed.device", threads=1)
        assert dev == torch.device("cpu") and torch.get_num_threads() == 1
        assert "embed.device: running on cpu (1 threads" in caplog.text
        # the CPU model, kernel instruction set and caches are logged: CPU numerics depend on them
        assert f"{torch.backends.cpu.get_cpu_capability()} kernels" in caplog.text
    finally:
        torch.set_num_threads(before)


def test_describe_cpu_names_model_isa_and_caches(tmp_path, monkeypatch):
    text = training.describe_cpu()
    assert text.startswith("CPU ") and f"{torch.backends.cpu.get_cpu_capability()} kernels" in text
    if Path("/proc/cpuinfo").is_file():
        model = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                     if line.startswith("model name"))
        assert model in text
    if any(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/level")):
        assert "L2 " in text or "L3 " in text
    # another OS: nothing to read is not an error
    real_open = open

    def no_proc(path, *a, **k):
        if str(path) == "/proc/cpuinfo":
            raise OSError("no /proc here")
        return real_open(path, *a, **k)

    monkeypatch.setattr("builtins.open", no_proc)
    monkeypatch.setattr(training.platform, "processor", lambda: "")
    monkeypatch.setattr(training.platform, "machine", lambda: "arm64")
    assert training.describe_cpu().startswith("CPU arm64")


# --------------------------------------------------------------------------------------------
# checkpoint folder lock
# --------------------------------------------------------------------------------------------
def test_checkpoint_folder_hash_is_stable():
    from sharpgen.config import section_hash

    a = training.checkpoint_folder("ck", {"lr": 1}, {"data": "x"})
    assert a == Path("ck") / section_hash({"lr": 1}, {"data": "x"}) and len(a.name) == 12
    assert a != training.checkpoint_folder("ck", {"lr": 2}, {"data": "x"})


def test_lock_in_process_is_exclusive_and_released(tmp_path):
    folder = tmp_path / "ck"
    with training.folder_lock(folder, "test") as lock:
        assert lock == folder / "train.lock"
        text = lock.read_text()
        assert f'"pid": {os.getpid()}' in text and socket.gethostname() in text
        with pytest.raises(CheckpointLockError, match=f"pid {os.getpid()}"):
            with training.folder_lock(folder, "test"):
                pass
    with training.folder_lock(folder, "again"):  # released on exit
        pass
    with pytest.raises(RuntimeError, match="boom"):
        with training.folder_lock(folder, "x"):
            raise RuntimeError("boom")
    with training.folder_lock(folder, "after an exception"):
        pass


_HOLDER = textwrap.dedent("""
    import sys, time
    from sharpgen import training
    with training.folder_lock(sys.argv[1], "holder test"):
        print("locked", flush=True)
        time.sleep(120)
""")


def test_lock_held_by_another_process_names_host_and_pid(tmp_path):
    folder = tmp_path / "ck"
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER, str(folder)], cwd=REPO_ROOT,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(CheckpointLockError) as exc:
            with training.folder_lock(folder, "second"):
                pass
        msg = str(exc.value)
        assert f"pid {proc.pid}" in msg and f"host {socket.gethostname()}" in msg
        assert "holder test" in msg and str(folder) in msg
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    with training.folder_lock(folder, "after the holder was killed"):  # the kernel released it
        pass


# --------------------------------------------------------------------------------------------
# checkpoint files
# --------------------------------------------------------------------------------------------
def _touch_ckpts(folder: Path, steps, prefix="step"):
    folder.mkdir(parents=True, exist_ok=True)
    for s in steps:
        training.save_checkpoint(folder, s, {"step": s, "w": torch.full((3,), float(s))},
                                 keep=10**6, prefix=prefix)


def test_prune_only_below_the_current_step(tmp_path):
    _touch_ckpts(tmp_path, [10, 20, 30, 900])
    deleted = training.prune_checkpoints(tmp_path, 30, keep=2)
    assert [p.name for p in deleted] == ["step_00000010.pt"]
    assert [s for s, _ in training.list_checkpoints(tmp_path)] == [20, 30, 900]
    assert training.prune_checkpoints(tmp_path, 30, keep=1)[0].name == "step_00000020.pt"
    assert [s for s, _ in training.list_checkpoints(tmp_path)] == [30, 900]
    # save_checkpoint prunes the same way: the fresh file is never the victim
    training.save_checkpoint(tmp_path, 40, {"step": 40}, keep=2)
    training.save_checkpoint(tmp_path, 50, {"step": 50}, keep=2)
    assert [s for s, _ in training.list_checkpoints(tmp_path)] == [40, 50, 900]
    _touch_ckpts(tmp_path / "ssl", [1, 2, 3], prefix="epoch")
    assert [s for s, _ in training.list_checkpoints(tmp_path / "ssl", "epoch")] == [1, 2, 3]
    assert training.list_checkpoints(tmp_path / "ssl") == []


def test_newest_unreadable_checkpoint_is_quarantined(tmp_path, caplog):
    _touch_ckpts(tmp_path, [10, 20, 30, 900])
    (tmp_path / "step_00000030.pt").write_bytes(b"truncated")
    torch.save({"no_step": 1}, tmp_path / "step_00000020.pt")  # readable, lacks a key
    with caplog.at_level(logging.WARNING):
        step, path, state = training.find_resume_checkpoint(tmp_path, 100, required=("step",))
    assert step == 10 and state["step"] == 10 and path.name == "step_00000010.pt"
    assert "step_00000030.pt is unreadable" in caplog.text
    assert "step_00000020.pt is unreadable" in caplog.text and "missing keys ['step']" in caplog.text
    assert (tmp_path / "step_00000030.pt.corrupt").exists()
    assert (tmp_path / "step_00000020.pt.corrupt").exists()
    assert (tmp_path / "step_00000900.pt").exists()  # past max_step: never read or touched
    assert "EVERY" not in caplog.text
    assert [s for s, _ in training.list_checkpoints(tmp_path)] == [10, 900]


def test_all_checkpoints_unreadable_is_loud(tmp_path, caplog):
    tmp_path.mkdir(exist_ok=True)
    for s in (3, 6):
        (tmp_path / f"step_{s:08d}.pt").write_bytes(b"\x00" * 10)
    with caplog.at_level(logging.WARNING):
        assert training.find_resume_checkpoint(tmp_path, 10) is None
    loud = [r for r in caplog.records if "EVERY checkpoint" in r.getMessage()]
    assert len(loud) == 1 and loud[0].levelno == logging.WARNING
    assert "step_00000003.pt.corrupt" in loud[0].getMessage()
    assert "step_00000006.pt.corrupt" in loud[0].getMessage()
    assert "starting over" in loud[0].getMessage()
    assert training.find_resume_checkpoint(tmp_path / "none", 10) is None


def test_checkpoint_meta_mismatch_names_keys(tmp_path):
    training.check_meta("p.pt", {"a": 1, "b": 2}, {"a": 1, "b": 2})
    with pytest.raises(training.CheckpointMismatchError,
                       match=r"checkpoint p.pt .*\(b: checkpoint 2 != current 3\)"):
        training.check_meta("p.pt", {"a": 1, "b": 2}, {"a": 1, "b": 3})


def test_load_checkpoint_is_on_cpu_and_bytes_are_reproducible(tmp_path):
    state = {"step": 3, "w": torch.arange(5.0), "rng": torch.get_rng_state()}
    a = training.save_checkpoint(tmp_path / "a", 3, state, keep=2)
    b = training.save_checkpoint(tmp_path / "b", 3, state, keep=2)
    assert _sha(a) == _sha(b)  # torch.save to a path would embed the temporary file's name
    ck = training.load_checkpoint(a)
    assert all(v.device.type == "cpu" for v in ck.values() if isinstance(v, torch.Tensor))
    assert not list((tmp_path / "a").glob("*.tmp"))


# --------------------------------------------------------------------------------------------
# disk full
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("err, text", [
    (RuntimeError(TORCH_DISK_FULL), "no space left"),
    (OSError(errno.ENOSPC, "No space left on device"), "no space left"),
    (OSError(errno.EDQUOT, "Disk quota exceeded"), "disk quota exceeded"),
])
def test_disk_full_while_saving_is_named(tmp_path, monkeypatch, err, text):
    def fail(obj, f, *a, **k):
        f.write(b"partial")
        raise err

    monkeypatch.setattr(torch, "save", fail)
    with pytest.raises(atomic.DiskFullError) as exc:
        training.save_checkpoint(tmp_path, 5, {"step": 5}, keep=2)
    assert f"{text} on {tmp_path} while writing step_00000005.pt" in str(exc.value)
    assert exc.value.errno in (errno.ENOSPC, errno.EDQUOT)
    assert isinstance(exc.value, OSError) and exc.value.__cause__ is err
    assert list(tmp_path.iterdir()) == []  # no half-written file left


def test_other_write_errors_pass_through(tmp_path, monkeypatch):
    def fail(obj, f, *a, **k):
        raise RuntimeError("something else")

    monkeypatch.setattr(torch, "save", fail)
    with pytest.raises(RuntimeError, match="something else") as exc:
        training.write_torch(tmp_path / "x.pt", {})
    assert not isinstance(exc.value, atomic.DiskFullError)
    with pytest.raises(atomic.DiskFullError, match=f"no space left on {tmp_path}"):
        with atomic.atomic_path(tmp_path / "y.txt"):
            raise OSError(errno.ENOSPC, "No space left on device")


# --------------------------------------------------------------------------------------------
# RNG and optimiser state
# --------------------------------------------------------------------------------------------
def test_rng_roundtrip_and_cross_device_reseed(caplog):
    cpu = torch.device("cpu")
    gen = torch.Generator().manual_seed(5)
    gen.manual_seed(5)
    snap = training.rng_state(cpu, {"gen": gen})
    assert snap["devices"] == {"gen": "cpu"} and "cuda" not in snap
    expect_gen = torch.rand(4, generator=gen)
    expect_global = torch.rand(4)
    g2 = torch.Generator().manual_seed(99)
    assert training.restore_rng_state(snap, cpu, {"gen": g2}, seed=1, step=7) == []
    assert torch.equal(torch.rand(4, generator=g2), expect_gen)
    assert torch.equal(torch.rand(4), expect_global)
    # a generator state saved on CUDA (16-byte Philox state) cannot go into a CPU generator
    for cuda_snap in ({**snap, "gen": torch.zeros(16, dtype=torch.uint8),
                       "devices": {"gen": "cuda"}},
                      {"torch": snap["torch"], "gen": torch.zeros(16, dtype=torch.uint8)}):
        draws = []
        for _ in range(2):
            g3 = torch.Generator()
            with caplog.at_level(logging.WARNING):
                assert training.restore_rng_state(cuda_snap, cpu, {"gen": g3}, seed=1,
                                                  step=7, source="ck.pt") == ["generator 'gen'"]
            draws.append(torch.rand(4, generator=g3))
        assert torch.equal(draws[0], draws[1])  # reseeded deterministically from (seed, step)
        assert "resuming ck.pt on cpu" in caplog.text and "saved on cuda" in caplog.text
    assert training.derived_seed(1, 7) == training.derived_seed(1, 7) != training.derived_seed(1, 8)
    assert 0 <= training.derived_seed(2**40, 3) < 2**63


def test_optimizer_state_loads_with_cpu_step():
    p = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.Adam([p], lr=0.1)
    p.grad = torch.ones(3)
    opt.step()
    saved = opt.state_dict()
    q = torch.nn.Parameter(torch.ones(3))
    opt2 = torch.optim.Adam([q], lr=0.1)
    training.load_optimizer_state(opt2, saved)
    st = opt2.state[q]
    assert st["step"].device.type == "cpu" and float(st["step"]) == 1.0
    assert torch.equal(st["exp_avg"], opt.state[p]["exp_avg"])


# --------------------------------------------------------------------------------------------
# CSV log
# --------------------------------------------------------------------------------------------
def test_csv_log_restart_append_publish(tmp_path):
    log = CsvLog(tmp_path / "ck" / "log.csv", ("step", "loss"))
    assert log.restart(None) == []
    for s in (2, 4, 6):
        log.append({"step": s, "loss": 0.5 * s})
    assert [r["step"] for r in log.rows()] == ["2", "4", "6"]
    kept = log.restart(4)  # resumed at step 4: the row of step 6 is lost work
    assert [r["step"] for r in kept] == ["2", "4"]
    with open(log.path, "a") as fh:
        fh.write("1")  # a crash in the middle of writing the row of step 10
    assert [r["step"] for r in log.restart(100)] == ["2", "4"]
    log.append({"step": 6, "loss": 3.0})
    log.publish(tmp_path / "out" / "log.csv")
    assert (tmp_path / "out" / "log.csv").read_bytes() == \
        b"step,loss\r\n2,1.0\r\n4,2.0\r\n6,3.0\r\n"
    assert log.restart(None) == [] and log.rows() == []
    with pytest.raises(ValueError, match="key 'epoch'"):
        CsvLog(tmp_path / "x.csv", ("step",), key="epoch")
