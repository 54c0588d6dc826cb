"""Shared helpers for benchmarks: timing, medians, and the results table/JSON."""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def median_seconds(function, repeat: int = 3) -> float:
    """Median wall time of calling function() `repeat` times."""
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def report(area: str, rows: list[dict]) -> None:
    """Print a benchmark table and save it as tests/bench/results/<area>.json."""
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{area}.json").write_text(json.dumps(rows, indent=2))
    width = max(len(row["metric"]) for row in rows)
    print(f"\n== {area} ==")
    for row in rows:
        target = f"  (target {row['target']})" if row.get("target") else ""
        print(f"{row['metric']:<{width}}  {row['value']}{target}")
