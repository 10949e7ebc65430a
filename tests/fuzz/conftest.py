"""Prints how many inputs each fuzz target tried, and what became of them, after the run."""

from __future__ import annotations

import fuzz_targets
import pytest


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    lines = fuzz_targets.summary()
    if lines:
        terminalreporter.section("fuzz inputs tried")
        for line in lines:
            terminalreporter.write_line(line)
