"""Shared pytest plumbing: `report` lets a test print a figure (e.g. the crash
test's duplicate count) into the terminal summary, where CI logs keep it."""

import pytest

_REPORT: list[str] = []


@pytest.fixture
def report():
    return _REPORT.append


def pytest_terminal_summary(terminalreporter):
    if _REPORT:
        terminalreporter.section("mta test figures")
        for line in _REPORT:
            terminalreporter.write_line(line)
