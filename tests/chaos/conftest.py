"""Collects chaos results for the JSON report and the table at the end of the run."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.chaos import report
from tests.chaos.profiles import current

RESULTS: list[report.Result] = []


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not RESULTS:
        return
    profile = current().name
    out = Path(os.environ.get("CHAOS_REPORT", f"build/chaos-report-{profile}.json"))
    report.write(out, RESULTS, profile)
    terminalreporter.write_sep("-", f"chaos ({profile} profile), report in {out}")
    terminalreporter.write_line(report.table(RESULTS))
