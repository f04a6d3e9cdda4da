"""`python -m tests.chaos [--profile full] [--only NAME...] [--out FILE]`: run, report, judge."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from sandbox.pg import postgres_server
from tests.chaos import report, runner
from tests.chaos.profiles import PROFILES
from tests.chaos.scenarios import SCENARIOS


async def main(profile: str, names: list[str], out: Path) -> int:
    results: list[report.Result] = []
    async with postgres_server() as pg:
        for name in names:
            print(f"chaos: {name} ({profile}) ...", flush=True)
            result = await runner.run(name, PROFILES[profile], pg)
            print(f"chaos: {name}: {result.verdict} in {result.run_s:.0f} s", flush=True)
            results.append(result)
            report.write(out, results, profile)
    print(report.table(results))
    print(f"report: {out}")
    return 0 if all(r.verdict == "pass" for r in results) else 1


if __name__ == "__main__":
    cli = argparse.ArgumentParser(prog="python -m tests.chaos", description=__doc__)
    cli.add_argument("--profile", choices=sorted(PROFILES), default="full")
    cli.add_argument("--only", nargs="+", choices=list(SCENARIOS), default=list(SCENARIOS))
    cli.add_argument("--out", type=Path, default=Path("build/chaos-report.json"))
    args = cli.parse_args()
    sys.exit(asyncio.run(main(args.profile, args.only, args.out)))
