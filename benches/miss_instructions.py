#!/usr/bin/env python3
"""Instructions per classification miss against sqlparser's own parse, counted by callgrind.

Runs `examples/miss_cost.rs` under `valgrind --tool=callgrind`, collecting only inside its
three measured functions (sqlparser's parse; pgstepup's classification with the policy's
decision; a miss through the shared cache), and prints each one's instructions per call and
its ratio to the parse, for pgbench's short SELECT and pgJDBC's getColumns query.

    python3 benches/miss_instructions.py            # about 3 minutes after the build; needs valgrind
    python3 benches/miss_instructions.py --runs 5   # more runs, a steadier median

Each run's hash seeds are new, and with them the heap's state, which moves a parse's count by
about 1%: every run is printed, and the median of the ratios.

Stdlib only.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BINARY = ROOT / "target" / "release" / "examples" / "miss_cost"
MEASURED = ["parse_only", "classify_only", "miss_through_cache"]
LABELS = {
    "parse_only": "sqlparser's parse",
    "classify_only": "classify + policy",
    "miss_through_cache": "miss through the cache",
}


def count(statement: str, out_dir: Path) -> dict[str, float]:
    profile = out_dir / f"callgrind.{statement}"
    run = subprocess.run(
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={profile}"]
        + [f"--toggle-collect=miss_cost::{name}" for name in MEASURED]
        + [str(BINARY), statement],
        capture_output=True, text=True, check=True)
    rounds = int(re.search(r"rounds (\d+)", run.stdout).group(1))
    annotated = subprocess.run(
        ["callgrind_annotate", "--inclusive=yes", "--threshold=100", str(profile)],
        capture_output=True, text=True, check=True).stdout
    per_call = {}
    for name in MEASURED:
        found = re.search(rf"^\s*([\d,]+) \(\s*[\d.]+%\)\s+\S*:miss_cost::{name} ", annotated, re.M)
        if not found:
            sys.exit(f"no count for miss_cost::{name} in {profile}")
        per_call[name] = int(found.group(1).replace(",", "")) / rounds
    return per_call


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="runs per statement (default 3)")
    args = parser.parse_args()
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    subprocess.run(["cargo", "build", "--release", "-p", "pgstepup-benches", "--example",
                    "miss_cost"], cwd=ROOT, check=True)
    with tempfile.TemporaryDirectory() as scratch:
        for statement in ["short", "jdbc"]:
            runs = [count(statement, Path(scratch)) for _ in range(args.runs)]
            print(f"{statement}:")
            for name in MEASURED:
                counts = [run[name] for run in runs]
                ratios = [run[name] / run["parse_only"] - 1 for run in runs]
                each = "  ".join(f"{c:>9,.0f} ({r:+5.1%})" for c, r in zip(counts, ratios))
                print(f"  {LABELS[name]:<24} median {statistics.median(ratios):+6.1%}   {each}")


if __name__ == "__main__":
    main()
