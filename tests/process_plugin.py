"""pytest hooks that name a dead helper process in the test report (tests/processes.py)."""

from __future__ import annotations

import pytest

from tests.processes import dead_processes


def _banner(reports: list[str]) -> str:
    return "\n\n".join(f"A process this test needed has died: {r}" for r in reports)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    # A module-scoped server that died in an earlier test: fail now, saying why,
    # instead of letting this test time out or hit "connection refused".
    reports = dead_processes()
    if reports:
        pytest.fail(_banner(reports), pytrace=False)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    report = yield
    if report.failed and call.when == "call":
        reports = dead_processes()
        if reports:
            own = f"--- the test's own failure ---\n{report.longrepr}"
            report.longrepr = f"{_banner(reports)}\n\n{own}"
    return report
