#!/usr/bin/env python3
"""User-space instructions per transaction in each proxy, counted by callgrind.

Wall-clock ratios on a small shared machine move by ±15% between runs; instruction counts
do not. Each proxy runs under `valgrind --tool=callgrind` with collection switched on only
for a fixed pgbench -S run (after a warm-up), once per protocol mode; the count covers
everything the proxy process executes in user space (its own code, libraries, runtime),
not the kernel.

    python3 benches/load/instructions.py                  # simple, extended, prepared
    python3 benches/load/instructions.py --top 25         # plus pgstepup's top functions
    python3 benches/load/instructions.py --cache-kib 48   # plus first-level cache misses

With `--cache-kib N` callgrind also simulates an N KiB first-level data and instruction cache
(12-way when N is a multiple of 12, else 8-way; 64-byte lines; a 32 MiB last level) and
reports read, write and code misses per transaction: with N = 4 they count roughly the
distinct lines each transaction touches (what costs when PostgreSQL and pgbench run between the
proxy's wake-ups and evict it), with the host's own size whether a proxy's sessions fit in it.

Writes results/instructions_latest.md and .json.  Needs valgrind.  Stdlib only.
"""

from __future__ import annotations

import argparse
import pwd
import re
import shutil
import subprocess
import sys
from pathlib import Path

sys.dont_write_bytecode = True
sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness as H  # noqa: E402

EVENTS = re.compile(r"^events:\s+(.+)$", re.M)
TOTALS = re.compile(r"^totals:\s+(.+)$", re.M)
CACHE_EVENTS = {"D1mr": "read misses", "D1mw": "write misses", "I1mr": "code misses"}


def parse_totals(text: str) -> dict:
    """The event totals of a callgrind output file, by event name (Ir, D1mr, ...)."""
    events, totals = EVENTS.search(text), TOTALS.search(text)
    if not events or not totals:
        raise H.HarnessError("no events or totals in callgrind's output")
    return dict(zip(events.group(1).split(), (int(n) for n in totals.group(1).split())))


def parse_args(argv=None):
    def top(p):
        p.add_argument("--top", type=int, default=0,
                       help="also list pgstepup's N most expensive functions (self cost)")
        p.add_argument("--cache-kib", type=cache_size, default=0,
                       help="also simulate an N KiB first-level cache and count its misses")
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
            f"--callgrind-out-file={out}") + cache_args(args.cache_kib)
    t = ctx.start_pgbouncer(wrap=wrap) if name == "pgbouncer" else ctx.start_pgstepup(wrap=wrap)
    try:
        H.counted_pgbench(ctx, t, mode, args.clients, 50)  # connections, plans, caches warm
        callgrind_control(t, "on")
        transactions = H.counted_pgbench(ctx, t, mode, args.clients, args.transactions)
        callgrind_control(t, "off")
    finally:
        ctx.pm.stop(t.managed)
    totals = parse_totals(out.read_text())
    rec = {"proxy": name, "mode": mode, "clients": args.clients,
           "transactions": transactions, "instructions": totals["Ir"]}
    rec["per_txn"] = rec["instructions"] / transactions
    for event in CACHE_EVENTS:
        if event in totals:
            rec[event] = totals[event] / transactions
    if args.top and name == "pgstepup":
        r = subprocess.run(["callgrind_annotate", "--inclusive=no", str(out)],
                           capture_output=True, text=True)
        rows = [line for line in r.stdout.splitlines() if re.match(r"^\s*[\d,]+ \(", line)]
        rec["top"] = [" ".join(line.split()) for line in rows[1:1 + args.top]]
    misses = "".join(f", {rec[e]:.1f} {what}" for e, what in CACHE_EVENTS.items() if e in rec)
    H.log(f"{name:9} {mode:8} {rec['per_txn']:8,.0f} instructions/txn{misses} "
          f"({transactions} transactions)")
    return rec


def cache_ways(kib: int) -> int:
    """The simulated cache's associativity: 12-way when the size allows (as these hosts'
    48 KiB caches are), else 8-way."""
    return 12 if kib % 12 == 0 else 8


def cache_size(text: str) -> int:
    """`--cache-kib`: 0 (no simulation), or a size callgrind can simulate with `cache_args`'s
    ways and lines (a power-of-two number of sets)."""
    kib = int(text)
    if kib < 0:
        raise argparse.ArgumentTypeError(f"{kib}: a cache size is at least 0 KiB")
    if kib:
        ways = cache_ways(kib)
        sets = kib * 1024 // (ways * 64)
        if sets * ways * 64 != kib * 1024 or sets & (sets - 1):
            raise argparse.ArgumentTypeError(
                f"{kib} KiB: callgrind needs a power-of-two number of {ways}-way sets of "
                "64-byte lines (4, 8, 16, 32, 48, 64, 96 KiB ...)")
    return kib


def cache_args(kib: int) -> tuple:
    """callgrind's arguments for an N KiB first-level cache (none for 0)."""
    if not kib:
        return ()
    level1 = f"{kib * 1024},{cache_ways(kib)},64"
    return ("--cache-sim=yes", f"--D1={level1}", f"--I1={level1}", "--LL=33554432,16,64")


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
    if args.cache_kib:
        misses = {(r["proxy"], r["mode"]): r for r in records}
        for event, what in CACHE_EVENTS.items():
            headers += [f"pgbouncer {what}/txn", f"pgstepup {what}/txn"]
            for row, m in zip(rows, args.modes):
                row += [f"{misses[(p, m)][event]:.1f}" for p in ("pgbouncer", "pgstepup")]
    H.save_counts(args, ctx, "instructions", "Instructions per transaction (callgrind)",
                  headers, rows, records)
    for r in records:
        if r.get("top"):
            print(f"\npgstepup, {r['mode']}: top functions (self instructions)")
            print("\n".join(r["top"]))

if __name__ == "__main__":
    H.run_main(main)
