"""A helper-started process that dies is reported with its signal and last output."""

import os
import signal
import sys
import time
from pathlib import Path

import pytest

from tests.processes import ManagedProcess, ProcessDied, describe_exit

ROOT = Path(__file__).resolve().parent.parent
SAY_THEN_SLEEP = (
    "import sys, time; print('loading model.gguf', file=sys.stderr, flush=True); time.sleep(60)"
)


def wait_for_output(process: ManagedProcess, text: str) -> None:
    deadline = time.monotonic() + 20
    while text not in process.output_tail():
        assert time.monotonic() < deadline, f"no {text!r} from the child"
        time.sleep(0.05)


def test_describe_exit_names_signals_and_statuses():
    assert describe_exit(-signal.SIGILL) == "was killed by signal SIGILL (4)"
    assert describe_exit(-signal.SIGKILL) == "was killed by signal SIGKILL (9)"
    assert describe_exit(3) == "exited with status 3"


def test_a_process_killed_with_sigill_is_reported_with_the_signal_and_its_output():
    with ManagedProcess("fake server", [sys.executable, "-c", SAY_THEN_SLEEP]) as server:
        wait_for_output(server, "loading model.gguf")
        server.check_alive()
        os.kill(server.pid, signal.SIGILL)
        server.process.wait(timeout=10)
        with pytest.raises(ProcessDied) as died:
            server.check_alive()
    message = str(died.value)
    assert "fake server" in message
    assert "was killed by signal SIGILL (4)" in message
    assert "loading model.gguf" in message


def test_a_failing_test_and_the_next_one_name_the_dead_server(pytester, monkeypatch):
    """Through pytest itself: a module-scoped server killed mid-test makes that test's
    failure, and the next test's, say SIGKILL instead of only 'connection refused'."""
    pytester.makepyfile(
        test_inner=f"""
        import os, signal, sys
        import pytest
        from tests.processes import ManagedProcess

        @pytest.fixture(scope="module")
        def server():
            command = [sys.executable, "-c", {SAY_THEN_SLEEP!r}]
            with ManagedProcess("reference server", command) as p:
                yield p

        def test_first(server):
            os.kill(server.pid, signal.SIGKILL)
            server.process.wait(timeout=10)
            raise ConnectionRefusedError("[Errno 111] Connection refused")

        def test_second(server):
            pass
        """
    )
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    result = pytester.runpytest_subprocess(
        "-p",
        "no:django",
        "-p",
        "no:cacheprovider",
        "-p",
        "tests.process_plugin",
        "-o",
        "addopts=",
    )
    result.assert_outcomes(failed=1, errors=1)
    out = result.stdout.str()
    assert out.count("reference server (pid") >= 2, out
    assert "was killed by signal SIGKILL (9)" in out
    assert "Connection refused" in out  # the test's own failure is kept
