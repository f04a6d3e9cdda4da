"""`make bench`: every benchmark, JSON on stdout and a short table on stderr."""

from __future__ import annotations

import asyncio
import json
import sys

from tests.benchmarks import (
    bench_cost,
    bench_ingest,
    bench_packing,
    bench_recovery,
    bench_reuse,
    bench_runtime,
)


async def main() -> dict[str, object]:
    return {"runtime": await bench_runtime.main(), "ingest": await bench_ingest.main(),
            "recovery": await bench_recovery.main(), "cost": await bench_cost.main(), "reuse": await bench_reuse.main(),
            "packing": await bench_packing.main()}


def table(r: dict) -> str:
    rt, ing, rec, cost = r["runtime"], r["ingest"], r["recovery"], r["cost"]["runs"]
    ru, pk = r["reuse"], r["packing"]
    rows = [
        ("runtime no-op vs raw fetch(100)+ack", f"{rt['ratio_runtime_to_raw']}x",
         f"{rt['msg_per_s']['runtime_c100']} vs {rt['msg_per_s']['raw_fetch100_ack']} msg/s"),
        *((("FastStream pull(100) no-op vs raw", f"{rt['ratio_faststream_to_raw']}x",
            f"{rt['msg_per_s']['faststream_pull100']} msg/s "
            f"({rt['msg_per_s']['faststream_pull100_logging']} with its logging)"),)
          if "ratio_faststream_to_raw" in rt else ()),
        *((f"ingest {d} vs raw copy_records_to_table", f"{ing[d]['ratio']}x",
           f"{ing[d]['ingest_rows_per_s']} vs {ing[d]['raw_copy_rows_per_s']} rows/s")
          for d in ("768d", "3072d")),
        ("ingest peak RSS, 100k vs 10k items", f"{ing['peak_rss']['ratio_large_to_small']}x",
         f"{ing['peak_rss']['100000']['peak_rss_mb']} vs {ing['peak_rss']['10000']['peak_rss_mb']}"
         " MB"),
        ("replay parked vs raw publish_async", f"{rec['ratio']}x",
         f"{rec['replay_per_s']} vs {rec['raw_publish_async_per_s']} msg/s"),
        ("key.valid to first replay", f"{rec['key_valid_to_first_replay_s']} s", ""),
        *((f"cost, {c['pods_per_role']} pod(s) per role", f"{c['cpu_s_per_1000_items']} cpu-s/1k",
           f"{c['items_per_s']} items/s, {c['batches_per_s']} batches/s; submit "
           f"{c['cpu_s_per_1000_items_by_role']['submit']}, poll "
           f"{c['cpu_s_per_1000_items_by_role']['poll']}") for c in cost),
        *((f"cost vs its floor, {c['pods_per_role']} pod(s) per role",
           f"{c['cpu_ratio_to_floor']}x", f"floor {c['floor_cpu_s_per_1k_items']} cpu-s/1k")
          for c in cost),
        ("reuse 95k stored of 100k vs raw COPY", f"{ru['ratio_reuse_to_raw_copy']}x",
         f"{ru['reuse_rows_per_s']} vs {ru['raw_copy_rows_per_s']} rows/s"),
        ("reuse CPU vs ingesting, ours", f"{ru['cpu_ratio_reuse_to_ingest_ours']}x", ""),
        ("reuse CPU vs ingesting, with PostgreSQL", f"{ru['cpu_ratio_reuse_to_ingest']}x",
         f"{ru['cpu_s_per_1000_reused']} vs {ru['cpu_s_per_1000_ingested']} cpu-s/1k"),
        ("quota used, packed vs one job a batch", f"{pk['ratio']}x",
         f"{pk['packed']['utilisation']} vs {pk['unpacked']['utilisation']} of the quota"),
    ]
    width = max(len(r[0]) for r in rows)
    return "\n".join(f"{a:<{width}}  {b:>16}  {c}" for a, b, c in rows)


if __name__ == "__main__":
    result = asyncio.run(main())
    print(json.dumps(result, indent=2))
    print(table(result), file=sys.stderr)
