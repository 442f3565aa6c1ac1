#!/usr/bin/env python3
"""System calls and context switches per transaction in each proxy.

Both proxies spend most of their CPU in the kernel, so what each asks of it per transaction
decides more than its own instructions do. For each proxy and protocol mode: a warm-up, a
pgbench -S run whose context switches (all the proxy's threads, from /proc) are divided by the
transactions, then a second run under `strace -c -f` whose system call counts are.

    python3 benches/load/syscalls.py                  # about 1 minute; needs strace

Writes results/syscalls_latest.md and .json.  Stdlib only.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.dont_write_bytecode = True
sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness as H  # noqa: E402

# strace -c's rows: % time, seconds, usecs/call, calls, [errors,] syscall.
STRACE_ROW = re.compile(r"^\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?(\w+)\s*$")


def context_switches(pid: int) -> dict[str, int]:
    """Voluntary and involuntary switches summed over the process's threads."""
    total = {"voluntary": 0, "involuntary": 0}
    for task in Path(f"/proc/{pid}/task").iterdir():
        for line in (task / "status").read_text().splitlines():
            if line.startswith("voluntary_ctxt_switches"):
                total["voluntary"] += int(line.split()[1])
            elif line.startswith("nonvoluntary_ctxt_switches"):
                total["involuntary"] += int(line.split()[1])
    return total


def count(ctx, args, name: str, mode: str) -> dict:
    t = ctx.start_pgbouncer() if name == "pgbouncer" else ctx.start_pgstepup()
    try:
        H.counted_pgbench(ctx, t, mode, args.clients, 50)  # connections, plans, caches warm
        before = context_switches(t.pid)
        transactions = H.counted_pgbench(ctx, t, mode, args.clients, args.transactions)
        after = context_switches(t.pid)
        switches = {k: (after[k] - before[k]) / transactions for k in after}
        out = ctx.pm.mkdtemp(f"pgstepup-bench-strace-{name}-") / "strace.txt"
        tracer = subprocess.Popen(["strace", "-c", "-f", "-p", str(t.pid), "-o", str(out)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        time.sleep(1)  # attached to every thread before the run starts
        if tracer.poll() is not None:
            raise H.HarnessError(f"strace could not attach to {name} (pid {t.pid}): "
                                 f"{tracer.stderr.read().strip()}")
        traced = H.counted_pgbench(ctx, t, mode, args.clients, args.transactions)
        tracer.send_signal(signal.SIGINT)
        _, complaint = tracer.communicate(timeout=60)
    finally:
        ctx.pm.stop(t.managed)
    calls = {}
    for line in (out.read_text() if out.exists() else "").splitlines():
        m = STRACE_ROW.match(line)
        if m and m.group(2) != "total":
            calls[m.group(2)] = int(m.group(1)) / traced
    if not calls:
        raise H.HarnessError(f"strace counted no system calls in {name}: {complaint.strip()}")
    rec = {"proxy": name, "mode": mode, "clients": args.clients,
           "transactions": transactions, "context_switches": switches,
           "syscalls": {k: v for k, v in calls.items() if v >= 0.005}}
    H.log(f"{name:9} {mode:8} " + " ".join(f"{k}={v:.2f}" for k, v in rec["syscalls"].items())
          + f" switches={switches['voluntary']:.2f}+{switches['involuntary']:.2f}")
    return rec


def main():
    args = H.parse_counting_args(
        "system calls and context switches per transaction in each proxy")
    if not shutil.which("strace"):
        raise H.HarnessError("strace is not installed (apt-get install strace)")
    ctx, records = H.count_each_proxy(args, count)
    names = sorted({c for r in records for c in r["syscalls"]})
    headers = ["mode", "proxy"] + [f"{c}/txn" for c in names] + [
        "voluntary switches/txn", "involuntary switches/txn"]
    rows = [[r["mode"], r["proxy"]] + [f"{r['syscalls'].get(c, 0):.2f}" for c in names]
            + [f"{r['context_switches']['voluntary']:.2f}",
               f"{r['context_switches']['involuntary']:.2f}"] for r in records]
    H.save_counts(args, ctx, "syscalls", "System calls and context switches per transaction",
                  headers, rows, records)

if __name__ == "__main__":
    H.run_main(main)
