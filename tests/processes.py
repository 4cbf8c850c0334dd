"""Processes that the suite starts (servers, workers), and how their death is reported.

A server that dies in the middle of a test shows up in the test as "connection refused",
which says nothing about why. A `ManagedProcess` keeps the process's output in a file;
while it is registered as expected to be alive, a failing test's report (and the next
test that uses it) names how it ended — exit status or signal, e.g. SIGILL — and the
last lines it printed. The hooks live in `tests/process_plugin.py`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import IO

TAIL_LINES = 30

# The processes that are supposed to be running right now.
ALIVE: list[ManagedProcess] = []


class ProcessDied(AssertionError):
    """A process the suite started and still needed has ended."""


def describe_exit(returncode: int) -> str:
    """`-4` -> 'was killed by signal SIGILL (4)'; `3` -> 'exited with status 3'."""
    if returncode < 0:
        number = -returncode
        try:
            name = signal.Signals(number).name
        except ValueError:
            name = f"signal {number}"
        return f"was killed by signal {name} ({number})"
    return f"exited with status {returncode}"


class ManagedProcess:
    """A child process whose combined stdout/stderr goes to a temporary file.

    Use as a context manager: it is registered as expected-alive inside the block and
    terminated (then killed) on the way out.
    """

    def __init__(
        self,
        name: str,
        command: Sequence[str],
        *,
        env: dict[str, str] | None = None,
        cwd: str | Path | None = None,
    ) -> None:
        self.name = name
        self.command = list(command)
        self._log: IO[bytes] = tempfile.TemporaryFile(mode="w+b")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            self.command,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            cwd=cwd,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def output_tail(self, lines: int = TAIL_LINES) -> str:
        self._log.flush()
        self._log.seek(0)
        text = self._log.read()[-64_000:].decode(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def death(self) -> str | None:
        """None while running; otherwise a report of how it ended and what it printed."""
        returncode = self.process.poll()
        if returncode is None:
            return None
        return (
            f"{self.name} (pid {self.pid}) {describe_exit(returncode)}.\n"
            f"command: {' '.join(self.command)}\n"
            f"last lines of its output:\n{self.output_tail() or '(nothing)'}"
        )

    def check_alive(self) -> None:
        report = self.death()
        if report is not None:
            raise ProcessDied(report)

    def stop(self, timeout: float = 10) -> None:
        if self in ALIVE:
            ALIVE.remove(self)
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=timeout)
        self._log.close()

    def __enter__(self) -> ManagedProcess:
        ALIVE.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def dead_processes() -> list[str]:
    """Reports for every process that should be running and is not."""
    return [report for p in ALIVE if (report := p.death()) is not None]
