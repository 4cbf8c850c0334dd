"""One fine-tune on several devices: the run launched with accelerate, watched by the worker.

What is accelerate's (and torch.distributed's), not ours:
- the launcher: `accelerate launch` (torchrun's elastic agent underneath) starts one
  process per device, sets up their rendezvous, and when one of them dies stops the
  others and exits non-zero, so a killed process never leaves the rest waiting in a
  collective;
- the process group (gloo on CPU, nccl on CUDA), DDP or FSDP wrapping, gradient
  reduction, `no_sync` for gradient accumulation, gathering for the checkpoints
  (`Accelerator` in `workers.runtime.training.run_training`);
- multi-node: an accelerate config file (STUDIO_ACCELERATE_CONFIG: num_machines,
  machine_rank, main_process_ip/port) is passed to the launcher as is.

What is ours: `launch()` on the worker's side writes the run's RunSpec to
`work_dir/launch/spec.json`, starts the launcher in its own process group, and while
it runs reads `events.jsonl` that the main training process appends to (progress, log
lines, the result; any process's TrainingError), so the job's lease, progress and log
work as for a one-process run. Cancelling (or a lost lease) kills the whole process
group. The launcher's exit without a result is a TrainingError: the kind a process
reported (bad_data, out_of_memory, ...), or `process_lost` naming the process and the
signal that ended it; its checkpoints stay, so the job resumes from the last one.

`python -m workers.runtime.distributed <spec.json>` is what each launched process runs
(`main()`); the launcher itself starts through `--guard`, which ties its life to the
worker's (PR_SET_PDEATHSIG) before it becomes `accelerate launch`: a worker killed with
SIGKILL leaves no training processes behind to race its job's next run.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

LAUNCH_DIR = "launch"
SPEC_FILE = "spec.json"
EVENTS_FILE = "events.jsonl"
LAUNCH_LOG = "launch.log"
POLL_SECONDS = 0.2
CANCEL_CHECK_SECONDS = 1.0
KILL_GRACE_SECONDS = 5.0
STRATEGIES = ("ddp", "fsdp")


def _setting(name: str, default: Any) -> Any:
    try:
        from django.conf import settings

        return getattr(settings, name)
    except Exception:  # a bare worker process
        return os.environ.get(name, default)


def devices_here() -> tuple[str, int]:
    """(what offers them, the devices one job may use from this worker): the processes
    of the accelerate config (STUDIO_ACCELERATE_CONFIG: all its machines), the GPUs this
    process sees, or the training processes a CPU worker may start
    (STUDIO_TRAIN_MAX_CPU_PROCESSES)."""
    import torch

    config_file = str(_setting("STUDIO_ACCELERATE_CONFIG", "") or "")
    if config_file:
        from accelerate.commands.config.config_args import load_config_from_file

        return f"the accelerate config {config_file}", int(
            load_config_from_file(config_file).num_processes or 1
        )
    if torch.cuda.is_available():
        return "this cuda worker", torch.cuda.device_count()
    return "this cpu worker", int(_setting("STUDIO_TRAIN_MAX_CPU_PROCESSES", 2))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def launch_arguments(devices: int, *, cuda: bool, strategy: str, config_file: str) -> list[str]:
    """`accelerate launch`'s options for a run on `devices` processes of this machine
    under its torchrun launcher: DDP (`--multi_gpu`; on a CPU worker the environment
    adds ACCELERATE_USE_CPU, accelerate's multi-CPU mode: gloo, one process per "device",
    the cores split between them) or, on GPUs, FSDP (base weights sharded, each
    transformer block wrapped, full state dicts for the adapter); or what an accelerate
    config file says (multi-node)."""
    if config_file:
        return ["--config_file", config_file, "--num_processes", str(devices)]
    args = ["--num_machines", "1", "--num_processes", str(devices)]
    args += ["--main_process_port", str(free_port()), "--mixed_precision", "no"]
    args += ["--dynamo_backend", "no", "--monitor_interval", "0.5"]
    if not cuda:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
        threads = max(1, (cores or os.cpu_count() or 1) // devices)
        args += ["--num_cpu_threads_per_process", str(threads)]
    if strategy == "fsdp" and cuda:  # accelerate shards on GPUs only
        return [
            *args,
            "--use_fsdp",
            "--fsdp_sharding_strategy",
            "FULL_SHARD",
            "--fsdp_auto_wrap_policy",
            "TRANSFORMER_BASED_WRAP",
            "--fsdp_state_dict_type",
            "FULL_STATE_DICT",
            "--fsdp_use_orig_params",
            "true",
            # every process loads the same weights and seeds LoRA alike: nothing to sync
            # from the main one (and FSDP cannot sync on CPU)
            "--fsdp_sync_module_states",
            "false",
            "--fsdp_cpu_ram_efficient_loading",
            "false",
        ]
    return [*args, "--multi_gpu"]


def launch_command(spec_path: Path, devices: int, *, cuda: bool) -> list[str]:
    strategy = str(_setting("STUDIO_TRAIN_STRATEGY", "ddp"))
    config_file = str(_setting("STUDIO_ACCELERATE_CONFIG", "") or "")
    return [
        sys.executable,
        "-m",
        "workers.runtime.distributed",
        "--guard",
        *launch_arguments(devices, cuda=cuda, strategy=strategy, config_file=config_file),
        "-m",
        "workers.runtime.distributed",
        str(spec_path),
    ]


def launch(
    spec: Any,
    *,
    devices: int,
    on_progress: Callable[[Any], None],
    should_cancel: Callable[[], bool],
    log: Callable[[str], None],
) -> Any:
    """Run `spec` (a training.RunSpec) on `devices` processes under `accelerate launch`
    and wait for it; see the module docstring. Returns the TrainResult; TrainingError
    when it fails or is cancelled."""
    import torch

    from workers.runtime.training import Progress, TrainingError, TrainResult

    run_dir = Path(spec.work_dir) / LAUNCH_DIR
    run_dir.mkdir(parents=True, exist_ok=True)
    spec_path = run_dir / SPEC_FILE
    spec_path.write_text(json.dumps(asdict(spec)))
    events_path = run_dir / EVENTS_FILE
    events_path.write_text("")
    cuda = torch.cuda.is_available()
    command = launch_command(spec_path, devices, cuda=cuda)
    if not cuda and _setting("STUDIO_TRAIN_STRATEGY", "ddp") == "fsdp":
        log("STUDIO_TRAIN_STRATEGY=fsdp: accelerate shards on GPUs only; DDP on this CPU worker")
    # as a person would type it (e.g. on the other machines of a multi-node run)
    log(f"launching {devices} training processes: accelerate launch {' '.join(command[4:])}")
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    env["PYTHONUNBUFFERED"] = "1"
    if not cuda:
        env["ACCELERATE_USE_CPU"] = "true"
    with open(run_dir / LAUNCH_LOG, "ab") as output:
        output.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(command)}\n".encode())
        output.flush()
        process = subprocess.Popen(
            command,
            stdout=output,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,  # its own process group: cancel kills all of it
        )
    reader = _Events(events_path)
    result: dict | None = None
    errors: list[dict] = []
    try:
        next_cancel_check = 0.0
        while True:
            code = process.poll()
            for event in reader.read():
                kind = event.pop("event")
                if kind == "progress":
                    on_progress(Progress(**event))
                elif kind == "log":
                    log(event["line"])
                elif kind == "result":
                    result = event
                elif kind == "error":
                    errors.append(event)
                elif kind == "started":
                    log(f"training process {event['rank']}: pid {event['pid']} on {event['host']}")
            if code is not None:
                break
            if time.monotonic() >= next_cancel_check:
                next_cancel_check = time.monotonic() + CANCEL_CHECK_SECONDS
                if should_cancel():
                    kill_group(process)
                    raise TrainingError(
                        "cancelled: the training processes were stopped", kind="cancelled"
                    )
            time.sleep(POLL_SECONDS)
    except BaseException:
        kill_group(process)
        raise
    if code == 0 and result is not None:
        return TrainResult(**{**result, "adapter_dir": Path(result["adapter_dir"])})
    known = [e for e in errors if e.get("kind") in TrainingError.KINDS]
    if known:  # bad data, out of memory...: what a person can act on
        first = known[0]
        raise TrainingError(first["message"], kind=first["kind"])
    failures = launcher_failures(run_dir / LAUNCH_LOG)
    killed = [(rank, status) for rank, status in failures if status < 0]
    if errors and not killed:  # a process crashed, the others lost it: a bug
        first = errors[0]
        raise RuntimeError(f"training process {first['rank']} failed: {first['message']}")
    raise TrainingError(lost_message(code, failures, run_dir), kind="process_lost")


def kill_group(process: subprocess.Popen, grace: float = KILL_GRACE_SECONDS) -> None:
    """SIGTERM to the launcher's whole process group, SIGKILL to whatever is left after
    `grace` seconds; returns once the launcher is gone."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 30.0)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            break
        try:
            process.wait(timeout=wait)
            # the launcher is gone; its processes may not be: the group gets SIGKILL
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            break
        except subprocess.TimeoutExpired:
            continue
        break
    if process.poll() is None:
        process.wait()


_FAILURE = re.compile(r"rank\s*:\s*(\d+).*?exitcode\s*:\s*(-?\d+)", re.S)


def launcher_failures(launch_log: Path) -> list[tuple[int, int]]:
    """(rank, exit code) of each process the elastic agent reported failed in its last
    report, the first observed failure (its "root cause") first; a negative code is the
    signal that killed the process."""
    try:
        tail = launch_log.read_bytes()[-20000:].decode("utf-8", "replace")
    except OSError:
        return []
    report = tail.rsplit("Failures:", 1)
    if len(report) < 2:
        return []
    others, _, root = report[1].partition("Root Cause")
    return [(int(rank), int(status)) for rank, status in _FAILURE.findall(root + others)]


def lost_message(code: int, failures: list[tuple[int, int]], run_dir: Path) -> str:
    """Why the launcher ended without a result, for a person: the process and the
    signal or exit status the elastic agent reported, else the launcher's own status."""
    again = "The job resumes from its last checkpoint when it runs again."
    if failures:
        rank, status = failures[0]
        how = (
            f"was killed by {signal.Signals(-status).name}"
            if status < 0 and -status in {s.value for s in signal.Signals}
            else f"exited with status {status}"
        )
        return f"training process {rank} {how}; the other processes were stopped. {again}"
    how = f"signal {-code}" if code < 0 else f"status {code}"
    return (
        f"the training launcher ended with {how} before the run finished "
        f"({run_dir / LAUNCH_LOG}). {again}"
    )


class _Events:
    """New complete lines of the events file, as dicts."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.partial = b""

    def read(self) -> list[dict]:
        try:
            with open(self.path, "rb") as handle:
                handle.seek(self.offset)
                data = handle.read()
        except OSError:
            return []
        self.offset += len(data)
        data = self.partial + data
        *lines, self.partial = data.split(b"\n")
        return [json.loads(line) for line in lines if line.strip()]


# --- in the launched processes ------------------------------------------------------------


def _die_with_parent(sig: int) -> None:
    """Ask Linux to send `sig` to this process when its parent dies (PR_SET_PDEATHSIG);
    exit at once if the parent is already gone. Elsewhere, nothing."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    parent = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, sig, 0, 0, 0)  # PR_SET_PDEATHSIG
    if os.getppid() != parent or parent == 1:
        os._exit(1)


class _Writer:
    """Appends events to the events file (one JSON object a line, O_APPEND writes)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __call__(self, event: str, **data: Any) -> None:
        line = json.dumps({"event": event, **data}, default=str) + "\n"
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)


def run_process(spec_path: Path) -> int:
    """One launched process: train its part of the run; the main process reports
    progress, log lines and the result as events; any process its TrainingError."""
    from workers.runtime.training import RunSpec, TrainingError, run_training

    spec = RunSpec(**json.loads(Path(spec_path).read_text()))
    rank = int(os.environ.get("RANK", "0"))
    emit = _Writer(Path(spec_path).parent / EVENTS_FILE)
    emit("started", rank=rank, pid=os.getpid(), host=socket.gethostname())
    try:
        result = run_training(
            spec,
            on_progress=lambda p: emit("progress", **asdict(p)),
            should_cancel=lambda: False,  # the worker kills the process group instead
            log=lambda line: emit("log", line=line),
        )
    except TrainingError as exc:
        emit("error", kind=exc.kind, message=str(exc), rank=rank)
        return 1
    except Exception as exc:
        traceback.print_exc()
        emit("error", kind="", message=f"{type(exc).__name__}: {exc}", rank=rank)
        return 1
    if rank == 0 and result is not None:
        emit("result", **{**asdict(result), "adapter_dir": str(result.adapter_dir)})
    _end_process_group()
    return 0


def _end_process_group() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def main(argv: list[str]) -> int:
    if argv and argv[0] == "--guard":
        _die_with_parent(signal.SIGTERM)  # the launcher stops its processes on SIGTERM
        os.execv(sys.executable, [sys.executable, "-m", "accelerate.commands.launch", *argv[1:]])
    _die_with_parent(signal.SIGKILL)  # the launcher died without stopping us
    return run_process(Path(argv[0]))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
