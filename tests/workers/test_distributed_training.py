"""Multi-device fine-tuning on CPU: accelerate's multi-CPU mode (2 processes, gloo) on the
tiny random Llama against one process, a killed process, and cancel.

Why the results agree, and within what: the two processes walk the same batches, each
takes half of every batch, and each scales its loss so that DDP's averaged gradient is
the one-process gradient; the learning-rate schedule is the one-process schedule. What
differs is float32 summation order (per-process partial sums of the loss and of the
gradients, then gloo's all-reduce). Measured here: step losses within 1e-7 relative,
adapter weights (up to 0.2 in size after 6 steps at lr 1e-2) within 1.2e-6. The
tolerances (losses rel 1e-5; weights atol 2e-5, rtol 1e-4) leave ten times that for
other CPUs' kernels, and stay far under what a wrong split would change: a different
global batch, a step's learning rate or a lost micro-batch moves these weights by
~1e-3 to 1e-2 (AdamW's steps are about lr in size).
"""

import dataclasses
import os
import re
import signal
import time
from pathlib import Path

import pytest

from tests.workers.conftest import TINY
from tests.workers.test_training import FAST, ROWS, Recorder, adapter_weights, write_rows
from workers.runtime.training import LoraSettings, TrainingError, train

# dropout off: each process draws its own dropout masks, so only without it are two runs
# the same computation; grad_accum 2 so that the no_sync micro-batch path is exercised.
LORA = LoraSettings(dropout=0.0)
SETTINGS = dataclasses.replace(FAST, batch_size=3, grad_accum=2, max_steps=6, checkpoint_every=2)


def _run(base, rows_path, work_dir, recorder, devices):
    return train(
        base_model=base,
        rows_path=rows_path,
        lora=LORA,
        train=SETTINGS,
        work_dir=work_dir,
        on_progress=recorder.on_progress,
        should_cancel=recorder.should_cancel,
        log=recorder.logs.append,
        devices=devices,
    )


@pytest.fixture
def rows(tmp_path):
    return write_rows(tmp_path / "rows.jsonl", ROWS)


def _pids(logs: list[str]) -> dict[int, int]:
    found = (re.search(r"training process (\d+): pid (\d+)", line) for line in logs)
    return {int(m[1]): int(m[2]) for m in found if m}


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as stat:  # a zombie is gone for our purpose
            return stat.read().split(")")[-1].split()[0] == "Z"
    except FileNotFoundError:  # it ended between the two looks
        return True


def _assert_same_adapter(got: Path, expected: Path) -> None:
    import torch

    a, b = adapter_weights(got), adapter_weights(expected)
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=2e-5)


def test_two_cpu_processes_train_what_one_process_trains(tiny, rows, tmp_path):
    one, two = Recorder(), Recorder()

    single = _run(tiny, rows, tmp_path / "one", one, devices=1)
    started = time.monotonic()
    double = _run(tiny, rows, tmp_path / "two", two, devices=2)
    seconds = time.monotonic() - started

    assert two.steps() == one.steps() == [1, 2, 3, 4, 5, 6]
    for a, b in zip(two.progress, one.progress, strict=True):
        assert a.loss == pytest.approx(b.loss, rel=1e-5)
        assert a.learning_rate == pytest.approx(b.learning_rate)
        if b.eval_loss is not None:
            assert a.eval_loss == pytest.approx(b.eval_loss, rel=1e-5)
    _assert_same_adapter(double.adapter_dir, single.adapter_dir)
    assert double.metrics["devices"] == 2 and single.metrics["devices"] == 1
    assert double.metrics["steps"] == 6 and double.base_model_sha256 == single.base_model_sha256
    assert any("2 processes (MULTI_CPU)" in line for line in two.logs), two.logs
    assert sorted(_pids(two.logs)) == [0, 1]
    assert not (tmp_path / "two" / "checkpoints").exists()
    assert seconds < 120


def test_cancel_kills_every_training_process(tiny, rows, tmp_path):
    recorder = Recorder()
    recorder.should_cancel = lambda: len(_pids(recorder.logs)) == 2  # both started

    with pytest.raises(TrainingError) as info:
        _run(tiny, rows, tmp_path / "job", recorder, devices=2)

    assert info.value.kind == "cancelled"
    assert all(_gone(pid) for pid in _pids(recorder.logs).values())
    assert not _running_with(tmp_path / "job" / "launch" / "spec.json")  # the launcher too
    assert not (tmp_path / "job" / "adapter").exists()


def _running_with(path: Path) -> list[int]:
    """Live processes whose command line names `path`."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            command = (proc / "cmdline").read_bytes().decode(errors="replace")
            if str(path) in command and not _gone(int(proc.name)):
                found.append(int(proc.name))
        except (OSError, ValueError):
            continue
    return found


@pytest.mark.django_db(transaction=True)
def test_a_two_device_job_whose_process_is_killed_is_requeued_and_resumes(
    squad, settings, tmp_path, smollm2_tokenizer, monkeypatch
):
    """The whole path on real processes: a registered tiny model, a fine-tune job asking
    for 2 devices, rank 1 SIGKILLed mid-run → every process stopped, the job requeued
    (not failed) with the reason in its log; its next run resumes from the last
    checkpoint and ends with the adapter one process trains."""
    from apps.basemodels.models import BaseModelVersion
    from apps.finetune import jobs
    from apps.finetune.models import Adapter
    from apps.generation import services as generation
    from tests.factories import UserFactory
    from tests.finetune.conftest import chat, jsonl, make_dataset, upload
    from tests.workers.test_base_models import register, save_tiny
    from workers.runtime.training import TrainSettings

    settings.DATA_DIR = tmp_path / "data"
    settings.STUDIO_MODELS_DIR = str(tmp_path / "store")
    save_tiny(tmp_path / "store", "tiny-llama", "llama", smollm2_tokenizer)
    assert register("tiny-llama", "tiny-llama").status == "ready"
    generation.model_target_create(
        actor=UserFactory(username="owner"),
        squad=squad,
        name="tiny",
        kind="local",
        base_model="tiny-llama",
    )
    version = upload(make_dataset(squad), jsonl(*[chat(f"q {i}", f"a {i}") for i in range(8)]))
    # enough steps that the processes are still training when the worker, which reads
    # their progress a little behind them, kills one at step 3
    train_settings = {"max_steps": 30, "batch_size": 2, "max_seq_len": 128, "checkpoint_every": 2}
    job = jobs.finetune_job_create(
        actor=UserFactory(username="engineer"),
        dataset_version=version,
        target_name="tiny",
        devices=2,
        lora={"dropout": 0.0},
        train=train_settings,
    )
    log = Path(job.work_dir) / "train.log"
    record = jobs._Run.on_progress
    killed: dict[int, int] = {}

    def kill_rank_1_at_step_3(run, progress):
        record(run, progress)
        if progress.step == 3 and not killed:
            killed.update(_pids(log.read_text().splitlines()))
            os.kill(killed[1], signal.SIGKILL)

    monkeypatch.setattr(jobs._Run, "on_progress", kill_rank_1_at_step_3)

    jobs.finetune_job_run(job_id=job.pk)

    job.refresh_from_db()
    assert job.status == "queued" and job.attempts == 1, job.error
    text = log.read_text()
    assert "stopped: process_lost: training process 1 was killed by SIGKILL" in text
    assert sorted(killed) == [0, 1] and all(_gone(pid) for pid in killed.values())

    jobs.finetune_job_run(job_id=job.pk)

    job.refresh_from_db()
    assert job.status == "succeeded" and job.attempts == 2, job.error
    assert job.resumed_at_steps[0] == 0, job.resumed_at_steps
    assert 2 <= job.resumed_at_steps[1] < 30 and job.resumed_at_steps[1] % 2 == 0
    assert job.step == 30 and [p[0] for p in job.points] == list(range(1, 31))
    adapter = Adapter.objects.get(job=job)
    assert adapter.metrics["devices"] == 2
    assert adapter.metrics["resumed_from_step"] == job.resumed_at_steps[1]
    one = train(
        base_model="tiny-llama",
        rows_path=Path(job.work_dir) / "rows.jsonl",
        lora=LORA,
        train=TrainSettings(**job.train),
        work_dir=tmp_path / "one",
        on_progress=lambda p: None,
        should_cancel=lambda: False,
        log=lambda line: None,
        base_model_sha256=BaseModelVersion.objects.get(model__name="tiny-llama").manifest_sha256,
    )
    assert adapter.base_model_sha256 == one.base_model_sha256
    _assert_same_adapter(Path(adapter.path), one.adapter_dir)


def test_a_worker_killed_with_sigkill_leaves_no_training_process_behind(
    tiny_data_dir, rows, tmp_path
):
    """The launcher dies with the worker (PR_SET_PDEATHSIG) and stops its processes: none
    is left to race the job's next run in the same work directory."""
    import json
    import subprocess
    import sys

    work_dir = tmp_path / "job"
    script = (
        "import dataclasses, sys\n"
        "from tests.workers.test_distributed_training import LORA, SETTINGS\n"
        "from workers.runtime.training import train\n"
        "train(base_model=sys.argv[1], rows_path=sys.argv[2], lora=LORA,\n"
        "      train=dataclasses.replace(SETTINGS, max_steps=10_000), work_dir=sys.argv[3],\n"
        "      on_progress=lambda p: None, should_cancel=lambda: False, log=print, devices=2)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    env["STUDIO_DATA_DIR"] = str(tiny_data_dir)
    worker = subprocess.Popen(
        [sys.executable, "-c", script, TINY, str(rows), str(work_dir)],
        cwd=Path(__file__).resolve().parents[2],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=open(tmp_path / "worker.err", "wb"),  # noqa: SIM115
    )
    events = work_dir / "launch" / "events.jsonl"
    pids: dict[int, int] = {}
    deadline = time.monotonic() + 120
    while len(pids) < 2 and time.monotonic() < deadline and worker.poll() is None:
        if events.exists():
            for line in events.read_text().splitlines():
                event = json.loads(line)
                if event["event"] == "started":
                    pids[event["rank"]] = event["pid"]
        time.sleep(0.2)
    assert sorted(pids) == [0, 1], (tmp_path / "worker.err").read_text()[-3000:]

    worker.kill()
    worker.wait()

    def left() -> list[int]:
        ranks = [pid for pid in pids.values() if not _gone(pid)]
        return ranks + _running_with(work_dir / "launch" / "spec.json")  # and the launcher

    deadline = time.monotonic() + 30
    while left() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not left()


# --- what is launched, and how a failure reads (no processes) ----------------------------


def test_launch_arguments_per_worker_kind_and_strategy():
    from workers.runtime.distributed import launch_arguments

    cpu = launch_arguments(2, cuda=False, strategy="ddp", config_file="")
    assert cpu[:4] == ["--num_machines", "1", "--num_processes", "2"]
    assert "--multi_gpu" in cpu and "--num_cpu_threads_per_process" in cpu
    assert "--use_fsdp" not in launch_arguments(2, cuda=False, strategy="fsdp", config_file="")
    gpu = launch_arguments(4, cuda=True, strategy="ddp", config_file="")
    assert "--multi_gpu" in gpu and "--num_cpu_threads_per_process" not in gpu
    fsdp = launch_arguments(4, cuda=True, strategy="fsdp", config_file="")
    assert "--use_fsdp" in fsdp and "--multi_gpu" not in fsdp
    assert fsdp[fsdp.index("--fsdp_sharding_strategy") + 1] == "FULL_SHARD"
    assert launch_arguments(8, cuda=True, strategy="ddp", config_file="/etc/a.yaml") == [
        "--config_file",
        "/etc/a.yaml",
        "--num_processes",
        "8",
    ]


def test_an_accelerate_config_says_how_many_devices_a_job_may_use(settings, tmp_path):
    from workers.runtime.distributed import devices_here

    assert devices_here() == ("this cpu worker", 2)
    config = tmp_path / "node0.yaml"
    config.write_text(
        "compute_environment: LOCAL_MACHINE\ndistributed_type: MULTI_GPU\nnum_machines: 2\n"
        "num_processes: 8\nmachine_rank: 0\nmain_process_ip: 10.0.0.4\n"
        "main_process_port: 29500\nmixed_precision: 'no'\n"
    )
    settings.STUDIO_ACCELERATE_CONFIG = str(config)
    assert devices_here() == (f"the accelerate config {config}", 8)


def test_the_elastic_agent_s_root_cause_names_the_lost_process(tmp_path):
    from workers.runtime.distributed import LAUNCH_LOG, launcher_failures, lost_message

    (tmp_path / LAUNCH_LOG).write_text(
        "Failures:\n[1]:\n  rank      : 0 (local_rank: 0)\n  exitcode  : -15 (pid: 12)\n"
        "-----\nRoot Cause (first observed failure):\n[0]:\n"
        "  rank      : 1 (local_rank: 1)\n  exitcode  : -9 (pid: 13)  (SIGKILL)\n"
    )
    assert launcher_failures(tmp_path / LAUNCH_LOG) == [(1, -9), (0, -15)]
    assert lost_message(1, [(1, -9)], tmp_path).startswith(
        "training process 1 was killed by SIGKILL; the other processes were stopped."
    )
    assert "exited with status 3" in lost_message(1, [(0, 3)], tmp_path)
    assert "the training launcher ended with signal 9" in lost_message(-9, [], tmp_path)
