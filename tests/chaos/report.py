"""Per-scenario results as JSON and as a table."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

COLUMNS = ("scenario", "batches", "items", "faults", "redeliveries", "drain s", "verdict")


@dataclass
class Result:
    scenario: str
    profile: str
    batches: int
    items: int
    faults: dict[str, int]
    redeliveries: dict[str, int]
    time_to_drain_s: float | None  # from the last fault (or publish) to every batch settled
    run_s: float  # from the first publish to the end of the check
    verdict: str  # pass, fail
    violations: list[str] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)

    @property
    def faults_total(self) -> int:
        return sum(self.faults.values())

    @property
    def redeliveries_total(self) -> int:
        return sum(self.redeliveries.values())

    def row(self) -> tuple[str, ...]:
        drain = "-" if self.time_to_drain_s is None else f"{self.time_to_drain_s:.1f}"
        return (self.scenario, str(self.batches), str(self.items), str(self.faults_total),
                str(self.redeliveries_total), drain, self.verdict)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["faults_total"] = self.faults_total
        data["redeliveries_total"] = self.redeliveries_total
        return data


def table(results: list[Result]) -> str:
    rows = [COLUMNS, *(r.row() for r in results)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines = [" | ".join(cell.ljust(w) if i == 0 else cell.rjust(w)
                        for i, (cell, w) in enumerate(zip(row, widths, strict=True)))
             for row in rows]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    for r in results:
        for v in r.violations:
            lines.append(f"{r.scenario}: {v}")
    return "\n".join(lines)


def write(path: Path, results: list[Result], profile: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"profile": profile,
                                "scenarios": [r.to_json() for r in results]}, indent=2) + "\n")
