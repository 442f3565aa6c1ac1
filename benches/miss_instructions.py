#!/usr/bin/env python3
"""Instructions per classification miss against sqlparser's own parse, counted by callgrind.

Runs `examples/miss_cost.rs` under `valgrind --tool=callgrind`, collecting only inside its
three measured functions (sqlparser's parse; pgstepup's classification with the policy's
decision; a miss through the shared cache), and prints each one's instructions per call and
its ratio to the parse, for pgbench's short SELECT and pgJDBC's getColumns query.

    python3 benches/miss_instructions.py        # about 2 minutes after the build; needs valgrind

Stdlib only.
"""

from __future__ import annotations

import re
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
    subprocess.run(["cargo", "build", "--release", "-p", "pgstepup-benches", "--example",
                    "miss_cost"], cwd=ROOT, check=True)
    with tempfile.TemporaryDirectory() as scratch:
        for statement in ["short", "jdbc"]:
            per_call = count(statement, Path(scratch))
            parse = per_call["parse_only"]
            print(f"{statement}:")
            for name in MEASURED:
                print(f"  {LABELS[name]:<24} {per_call[name]:>11,.0f} instructions"
                      f"  {per_call[name] / parse - 1:+6.1%}")


if __name__ == "__main__":
    main()
