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

import pytest

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
    found = (re.match(r"training process (\d+): pid (\d+)", line) for line in logs)
    return {int(m[1]): int(m[2]) for m in found if m}


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    with open(f"/proc/{pid}/stat") as stat:  # a zombie is gone for our purpose
        return stat.read().split(")")[-1].split()[0] == "Z"


def _assert_same_adapter(got, expected):
    import torch

    a, b = adapter_weights(got.adapter_dir), adapter_weights(expected.adapter_dir)
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
    _assert_same_adapter(double, single)
    assert double.metrics["devices"] == 2 and single.metrics["devices"] == 1
    assert double.metrics["steps"] == 6 and double.base_model_sha256 == single.base_model_sha256
    assert any("2 processes (MULTI_CPU)" in line for line in two.logs), two.logs
    assert sorted(_pids(two.logs)) == [0, 1]
    assert not (tmp_path / "two" / "checkpoints").exists()
    assert seconds < 120


def test_a_killed_process_fails_the_run_and_the_next_run_resumes_from_its_checkpoint(
    tiny, rows, tmp_path
):
    single = _run(tiny, rows, tmp_path / "one", Recorder(), devices=1)
    killer = Recorder()

    def kill_process_1_at_step_3(progress):
        killer.progress.append(progress)
        if progress.step == 3:
            os.kill(_pids(killer.logs)[1], signal.SIGKILL)
            time.sleep(3)  # the launcher notices within its monitor interval

    killer.on_progress = kill_process_1_at_step_3
    with pytest.raises(TrainingError) as info:
        _run(tiny, rows, tmp_path / "job", killer, devices=2)

    assert info.value.kind == "process_lost"
    assert "training process 1 was killed by SIGKILL" in str(info.value)
    assert "resumes from its last checkpoint" in str(info.value)
    assert all(_gone(pid) for pid in _pids(killer.logs).values())
    assert killer.steps()[-1] < 6
    # The processes may have run a step past the one the worker had read when it killed.
    checkpoints = (tmp_path / "job" / "checkpoints").glob("step-*")
    last = max(int(p.name.removeprefix("step-")) for p in checkpoints)
    assert last in (2, 4)

    resumed = Recorder()
    result = _run(tiny, rows, tmp_path / "job", resumed, devices=2)

    assert any(f"resuming from checkpoint step-{last}" in line for line in resumed.logs)
    assert resumed.steps() == list(range(last + 1, 7))
    assert result.metrics["resumed_from_step"] == last
    _assert_same_adapter(result, single)


def test_cancel_kills_every_training_process(tiny, rows, tmp_path):
    recorder = Recorder(cancel_after=1)

    with pytest.raises(TrainingError) as info:
        _run(tiny, rows, tmp_path / "job", recorder, devices=2)

    assert info.value.kind == "cancelled"
    pids = _pids(recorder.logs)
    assert sorted(pids) == [0, 1]
    assert all(_gone(pid) for pid in pids.values())
    assert not (tmp_path / "job" / "adapter").exists()
