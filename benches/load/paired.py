"""pgstepup/pgbouncer throughput within each round, pooled over several runs of run.py.

One run's medians move with the host; a ratio taken inside each round (the two proxies run
back to back) does not, and pooling rounds from several runs shows whether a difference
outlasts the noise:

    python3 benches/load/paired.py RUN1/latest.json RUN2/latest.json ...

Stdlib only.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.dont_write_bytecode = True
sys.path.insert(0, str(Path(__file__).resolve().parent))
import run  # noqa: E402


# What pairing reads of each run record (run.py writes them all).
FIELDS = ("target", "mode", "clients", "round", "ok", "tps")


def pooled_runs(paths):
    """Every run record of the files, each round renamed after its file so rounds stay apart.
    A file that is not run.py's latest.json is refused with a ValueError naming it."""
    runs = []
    for index, path in enumerate(paths):
        for r in json.loads(Path(path).read_text())["runs"]:
            missing = [f for f in FIELDS if not isinstance(r, dict) or f not in r]
            if missing:
                raise ValueError(f"{path}: a run record without {', '.join(missing)}")
            runs.append({**r, "round": f"{index}:{r['round']}"})
    return runs


def main(argv=None):
    paths = sys.argv[1:] if argv is None else argv
    if not paths:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    try:
        runs = pooled_runs(paths)
    except (OSError, ValueError, KeyError) as error:
        print(f"paired.py: cannot read a run's results: {error!r}", file=sys.stderr)
        return 2
    print(run.paired_table(runs, markdown=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
