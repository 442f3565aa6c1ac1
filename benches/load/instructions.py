#!/usr/bin/env python3
"""User-space instructions per transaction in each proxy, counted by callgrind.

Wall-clock ratios on a small shared machine move by ±15% between runs; instruction counts
do not. Each proxy runs under `valgrind --tool=callgrind` with collection switched on only
for a fixed pgbench -S run (after a warm-up), once per protocol mode; the count covers
everything the proxy process executes in user space (its own code, libraries, runtime),
not the kernel.

    python3 benches/load/instructions.py                  # simple, extended, prepared
    python3 benches/load/instructions.py --top 25         # plus pgstepup's top functions

Writes results/instructions_latest.md and .json.  Needs valgrind.  Stdlib only.
"""

from __future__ import annotations

import pwd
import re
import shutil
import subprocess
import sys
from pathlib import Path

sys.dont_write_bytecode = True
sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness as H  # noqa: E402

TOTALS = re.compile(r"^totals:\s+(\d+)", re.M)


def parse_args(argv=None):
    def top(p):
        p.add_argument("--top", type=int, default=0,
                       help="also list pgstepup's N most expensive functions (self cost)")
    return H.parse_counting_args(
        "instructions per transaction in pgbouncer and pgstepup (callgrind)", argv, top)


def callgrind_control(t, switch: str) -> None:
    """Switches collection on or off in the proxy (as the user the proxy runs as)."""
    owner = Path(f"/proc/{t.pid}").stat().st_uid
    kw = {} if owner == 0 else dict(user=owner, group=pwd.getpwuid(owner).pw_gid)
    r = subprocess.run(["callgrind_control", "-i", switch, str(t.pid)],
                       capture_output=True, text=True, timeout=120, **kw)
    if r.returncode != 0 or "OK" not in r.stdout:
        raise H.HarnessError(f"callgrind_control -i {switch} {t.pid} failed: "
                             f"{r.stdout}{r.stderr}")


def count(ctx, args, name: str, mode: str) -> dict:
    """Starts one proxy under callgrind, counts one pgbench run, stops it."""
    # pgbouncer runs as an unprivileged user when the harness runs as root; it writes here.
    owner = ctx._proxy_user() if name == "pgbouncer" else None
    out = ctx.pm.mkdtemp(f"pgstepup-bench-callgrind-{name}-", owner=owner) / "callgrind.out"
    wrap = ("valgrind", "--tool=callgrind", "--instr-atstart=no",
            f"--callgrind-out-file={out}")
    t = ctx.start_pgbouncer(wrap=wrap) if name == "pgbouncer" else ctx.start_pgstepup(wrap=wrap)
    try:
        H.counted_pgbench(ctx, t, mode, args.clients, 50)  # connections, plans, caches warm
        callgrind_control(t, "on")
        transactions = H.counted_pgbench(ctx, t, mode, args.clients, args.transactions)
        callgrind_control(t, "off")
    finally:
        ctx.pm.stop(t.managed)
    m = TOTALS.search(out.read_text())
    if not m:
        raise H.HarnessError(f"no totals in {out}")
    rec = {"proxy": name, "mode": mode, "clients": args.clients,
           "transactions": transactions, "instructions": int(m.group(1))}
    rec["per_txn"] = rec["instructions"] / transactions
    if args.top and name == "pgstepup":
        r = subprocess.run(["callgrind_annotate", "--inclusive=no", str(out)],
                           capture_output=True, text=True)
        rows = [line for line in r.stdout.splitlines() if re.match(r"^\s*[\d,]+ \(", line)]
        rec["top"] = [" ".join(line.split()) for line in rows[1:1 + args.top]]
    H.log(f"{name:9} {mode:8} {rec['per_txn']:8,.0f} instructions/txn "
          f"({transactions} transactions)")
    return rec


def main():
    args = parse_args()
    if not shutil.which("valgrind") or not shutil.which("callgrind_control"):
        raise H.HarnessError("valgrind is not installed (apt-get install valgrind)")
    ctx, records = H.count_each_proxy(args, count)
    per = {(r["proxy"], r["mode"]): r["per_txn"] for r in records}
    headers = ["mode", "clients", "pgbouncer instr/txn", "pgstepup instr/txn",
               "pgstepup/pgbouncer"]
    rows = [[m, str(args.clients), H.fmt_num(per[("pgbouncer", m)]),
             H.fmt_num(per[("pgstepup", m)]),
             f"{per[('pgstepup', m)] / per[('pgbouncer', m)]:.2f}"] for m in args.modes]
    H.save_counts(args, ctx, "instructions", "Instructions per transaction (callgrind)",
                  headers, rows, records)
    for r in records:
        if r.get("top"):
            print(f"\npgstepup, {r['mode']}: top functions (self instructions)")
            print("\n".join(r["top"]))

if __name__ == "__main__":
    H.run_main(main)
