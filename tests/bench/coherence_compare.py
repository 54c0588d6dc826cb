"""Two coherence runs side by side: a table and a plot of degenerate and audit-aligned shares per character.

Run: PYTHONPATH=.:tests/bench .venv/bin/python tests/bench/coherence_compare.py OUT.png \\
         tests/bench/results/coherence_retry_20x10_results.json:now tests/bench/results/coherence_card_20x10_results.json:card

Each argument after the picture is a results file (written by test_bench_coherence.py), the variant to take from
it and optionally a label (`path:now=first weights`); the runs must have played the same scripts and seeds.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from test_bench_coherence import plot


def main(picture: str, *runs: str) -> int:
    merged: dict = {}
    variants = []
    for run in runs:
        path, chosen = run.rsplit(":", 1)
        variant, _, label = chosen.partition("=")
        variants.append(label or variant)
        for character, figures in json.loads(Path(path).read_text()).items():
            merged.setdefault(character, {})[label or variant] = figures[variant]
    print("| character | " + " | ".join(f"{v}: degenerate / aligned / leakage" for v in variants) + " |")
    for character, figures in merged.items():
        cells = [f"{figures[v]['degenerate']}/{figures[v]['replies']} / {figures[v]['aligned']:.1%} / "
                 + ("–" if figures[v].get("leakage") is None else f"{figures[v]['leakage']:.1%}") for v in variants]
        print(f"| {character} | " + " | ".join(cells) + " |")
    print(plot(merged, Path(picture), variants))
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
