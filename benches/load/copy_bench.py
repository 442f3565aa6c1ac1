#!/usr/bin/env python3
"""COPY throughput through the proxies: direct vs pgbouncer vs pgstepup.

  in : psql -c "COPY copy_bench_t FROM STDIN" < generated file (default 64 MiB)
  out: psql -c "COPY copy_bench_t TO STDOUT"  > /dev/null

Also samples the proxy's VmRSS every 50 ms during each run (peak RSS).

    python3 benches/load/copy_bench.py --rounds 3
    python3 benches/load/copy_bench.py --rounds 1 --no-pgstepup

Writes results/copy_latest.md and results/copy_latest.json.  Stdlib only.
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.dont_write_bytecode = True
sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness as H  # noqa: E402

TABLE = "copy_bench_t"
MiB = 1024 * 1024


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="COPY in/out throughput and proxy peak RSS: direct vs pgbouncer vs pgstepup",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--size-mb", type=int, default=64, help="size of the COPY data in MiB")
    H.add_common_args(p)
    a = p.parse_args(argv)
    if a.size_mb < 1 or a.rounds < 1:
        p.error("--size-mb and --rounds must be >= 1")
    return a


def generate(path: Path, size: int) -> tuple[int, int]:
    """Deterministic text-format COPY data (no characters needing escapes, so
    COPY TO STDOUT reproduces it byte for byte).  Returns (bytes, rows)."""
    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
    base = (alphabet * 4)[:200]
    written = rows = 0
    with open(path, "w", encoding="ascii") as f:
        while written < size:
            chunk = []
            for i in range(rows, rows + 10000):
                o = (i * 7) % 100
                chunk.append(f"{i}\t{base[o:o + 100]}\t{(i * 7919) % 1000003}\n")
            data = "".join(chunk)
            if written + len(data) > size:  # trim to whole rows near the target
                keep, acc = [], written
                for line in chunk:
                    if acc >= size:
                        break
                    keep.append(line)
                    acc += len(line)
                data = "".join(keep)
                chunk = keep
            f.write(data)
            written += len(data)
            rows += len(chunk)
    return written, rows


def children_cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def copy_run(ctx, t, direction, datafile, nbytes, pgcpu) -> dict:
    base = ctx.psql_cmd(t.host, t.port, H.BENCH_DB)
    if direction == "in":
        cmd = base + ["-c", f"COPY {TABLE} FROM STDIN"]
        stdin = open(datafile, "rb")
        stdout = subprocess.PIPE
    else:
        cmd = base + ["-q", "-c", f"COPY {TABLE} TO STDOUT"]
        stdin = subprocess.DEVNULL
        stdout = open("/dev/null", "wb")
    rec = {"target": t.name, "direction": direction, "bytes": nbytes,
           "command": " ".join(cmd) + (f" < {datafile}" if direction == "in" else " > /dev/null")}
    px0 = H.proc_cpu_ticks(t.pid) if t.pid else None
    rss0, _ = H.proc_rss_kb(t.pid) if t.pid else (None, None)
    pg0, cl0 = pgcpu.ticks(), children_cpu_s()
    try:
        with H.RssSampler(t.pid, 0.05) as samp:
            w0 = time.monotonic()
            r = subprocess.run(cmd, stdin=stdin, stdout=stdout, stderr=subprocess.PIPE,
                               env=ctx.env, timeout=1800)
            wall = time.monotonic() - w0
    finally:
        for f in (stdin, stdout):
            if hasattr(f, "close"):
                f.close()
    cl1 = children_cpu_s()
    time.sleep(0.2)
    px1 = H.proc_cpu_ticks(t.pid) if t.pid else None
    pg1 = pgcpu.ticks()
    rec.update(returncode=r.returncode, wall_s=round(wall, 4),
               mib_per_s=nbytes / MiB / wall, psql_cpu_s=round(cl1 - cl0, 4))
    ok = r.returncode == 0
    if direction == "in":
        m = re.search(rb"COPY (\d+)", r.stdout or b"")
        rec["rows"] = int(m.group(1)) if m else None
    rec["ok"] = ok
    if not ok:
        rec["error"] = r.stderr.decode(errors="replace").strip()[-1500:]
    if t.pid:
        rec["proxy_rss_before_kib"] = rss0
        rec["proxy_peak_rss_kib"] = samp.peak_kb
        rec["rss_samples"] = samp.samples
        if px0 is not None and px1 is not None:
            rec["proxy_cpu_s"] = (px1 - px0) / H.CLK_TCK
            rec["proxy_cpu_ms_per_mib"] = rec["proxy_cpu_s"] * 1e3 / (nbytes / MiB)
    if pg0 is not None and pg1 is not None:
        rec["pg_cpu_s"] = (pg1 - pg0) / H.CLK_TCK
    return rec


def _med(v):
    v = [x for x in v if x is not None]
    return statistics.median(v) if v else None


def summarize(runs, names):
    out = []
    for d in ("in", "out"):
        row = {"direction": d, "targets": {}}
        for tn in names:
            rs = [r for r in runs if r["direction"] == d and r["target"] == tn and r["ok"]]
            peaks = [r.get("proxy_peak_rss_kib") for r in rs if r.get("proxy_peak_rss_kib")]
            befores = [r.get("proxy_rss_before_kib") for r in rs
                       if r.get("proxy_rss_before_kib")]
            row["targets"][tn] = {
                "n": len(rs),
                "failed_runs": sum(1 for r in runs if r["direction"] == d
                                   and r["target"] == tn and not r["ok"]),
                "mib_per_s_median": _med([r["mib_per_s"] for r in rs]),
                "mib_per_s_min": min((r["mib_per_s"] for r in rs), default=None),
                "mib_per_s_max": max((r["mib_per_s"] for r in rs), default=None),
                "wall_s_median": _med([r["wall_s"] for r in rs]),
                "proxy_peak_rss_mib": max(peaks) / 1024 if peaks else None,
                "proxy_rss_before_mib": min(befores) / 1024 if befores else None,
                "proxy_cpu_ms_per_mib": _med([r.get("proxy_cpu_ms_per_mib") for r in rs]),
                "pg_cpu_s": _med([r.get("pg_cpu_s") for r in rs]),
                "psql_cpu_s": _med([r.get("psql_cpu_s") for r in rs]),
            }
        out.append(row)
    return out


def _ratio(a, b):
    return a / b if (a is not None and b) else None


def main_table(summary, markdown):
    headers = ["direction", "direct MiB/s", "pgbouncer MiB/s", "pgstepup MiB/s",
               "pgbouncer/direct", "pgstepup/direct", "pgstepup/pgbouncer",
               "pgbouncer peak RSS MiB", "pgstepup peak RSS MiB"]
    rows = []
    for row in summary:
        t = row["targets"]

        def g(tn, k):
            return t.get(tn, {}).get(k)

        def speed(tn):
            if tn not in t:
                return "n/a"
            if t[tn]["n"] == 0:
                return "FAILED" if t[tn]["failed_runs"] else "n/a"
            return H.fmt_num(t[tn]["mib_per_s_median"], ",.1f")

        def rss(tn):
            pk, idle = g(tn, "proxy_peak_rss_mib"), g(tn, "proxy_rss_before_mib")
            if pk is None:
                return "n/a"
            return f"{pk:.1f}" + (f" (idle {idle:.1f})" if idle is not None else "")
        d, b, s = (g(x, "mib_per_s_median") for x in H.ALL_TARGETS)
        rows.append([row["direction"], speed("direct"), speed("pgbouncer"), speed("pgstepup"),
                     H.fmt_num(_ratio(b, d), ".3f"), H.fmt_num(_ratio(s, d), ".3f"),
                     H.fmt_num(_ratio(s, b), ".3f"), rss("pgbouncer"), rss("pgstepup")])
    return H.render_table(headers, rows, markdown)


def detail_table(summary, names, markdown):
    headers = ["direction", "target", "median s", "min–max MiB/s", "proxy CPU ms/MiB",
               "PostgreSQL CPU s", "psql CPU s"]
    rows = []
    for row in summary:
        for tn in names:
            x = row["targets"][tn]
            rng = (f"{x['mib_per_s_min']:,.1f}–{x['mib_per_s_max']:,.1f}"
                   if x["n"] else "n/a")
            rows.append([row["direction"], tn, H.fmt_num(x["wall_s_median"], ".3f"), rng,
                         H.fmt_num(x["proxy_cpu_ms_per_mib"], ".2f"),
                         H.fmt_num(x["pg_cpu_s"], ".2f"), H.fmt_num(x["psql_cpu_s"], ".2f")])
    return H.render_table(headers, rows, markdown, align_left=2)


def write_markdown(path, meta, summary, names):
    m, v, p = meta["machine"], meta["versions"], meta["parameters"]
    lines = [
        "# pgstepup COPY benchmark", "",
        f"- date: {meta['finished']}" + (" — **INTERRUPTED, partial results**"
                                          if meta.get("interrupted") else ""),
        f"- machine: {m['nproc']} CPUs, {m['cpu_model']}, {m['memory']}, "
        f"kernel {m['kernel']}",
        f"- 1-min load average before/after: "
        f"{meta['loadavg_1m']['start']} / {meta['loadavg_1m']['end']}",
        f"- PostgreSQL: {v['postgresql']}",
        f"- pgbouncer: {v['pgbouncer']} (pool_mode=session)",
        f"- pgstepup: git commit {v['pgstepup_git_commit']}"
        + (f", binary `{v['pgstepup_binary']}` ({v.get('pgstepup_version')})"
           if v.get("pgstepup_binary") else ", **not run** (--no-pgstepup)"),
        f"- data: {p['bytes'] / MiB:.1f} MiB, {p['rows']:,} rows, text format, "
        f"UNLOGGED table `{TABLE}`; rounds {p['rounds']}; sslmode {p['sslmode']}",
        f"- TLS between target and PostgreSQL: "
        + ", ".join(f"{k}={'yes' if x else 'no'}" for k, x in meta["upstream_tls"].items()),
        "",
        "## Throughput (median over rounds) and proxy peak RSS", "",
        main_table(summary, True), "",
        "MiB/s = data size / wall time of the psql process (includes connection set-up, "
        "negligible at this size). Peak RSS = max VmRSS of the proxy process sampled every "
        "50 ms during the runs; idle = RSS just before a run.", "",
        "## Details", "",
        detail_table(summary, names, True), "",
    ]
    path.write_text("\n".join(lines))


def main():
    args = parse_args()
    ctx = H.Ctx(args)
    runs, targets, interrupted = [], [], None
    started, load_start = H.now_iso(), H.loadavg()
    nbytes = rows = out_bytes = None
    try:
        ctx.check_server()
        ctx.ensure_database(None)
        ctx.sql(f"CREATE UNLOGGED TABLE IF NOT EXISTS {TABLE} "
                "(id bigint, payload text, n integer)", db=H.BENCH_DB)
        tmp = ctx.pm.mkdtemp("pgstepup-bench-copy-")
        datafile = tmp / "copy.tsv"
        H.log(f"generating {args.size_mb} MiB of COPY data")
        nbytes, rows = generate(datafile, args.size_mb * MiB)
        pgcpu = H.PgCpu(ctx)
        targets = ctx.start_targets()
        names = [t.name for t in targets]

        # sanity: load once directly and check COPY OUT reproduces the bytes
        ctx.sql(f"TRUNCATE {TABLE}", db=H.BENCH_DB)
        first = copy_run(ctx, targets[0], "in", datafile, nbytes, pgcpu)
        if not first["ok"] or first.get("rows") != rows:
            raise H.HarnessError(f"initial COPY IN failed or row count mismatch: {first}")
        r = subprocess.run(ctx.psql_cmd(targets[0].host, targets[0].port, H.BENCH_DB)
                           + ["-q", "-c", f"COPY {TABLE} TO STDOUT"],
                           capture_output=True, env=ctx.env, timeout=600)
        out_bytes = len(r.stdout)
        if out_bytes != nbytes:
            H.log(f"note: COPY OUT yields {out_bytes} bytes vs {nbytes} in")
        H.log(f"{nbytes / MiB:.1f} MiB, {rows:,} rows; {args.rounds} rounds × "
              f"{len(targets)} targets × in/out")
        try:
            for rnd in range(args.rounds):
                order = targets[rnd % len(targets):] + targets[:rnd % len(targets)]
                for t in order:
                    t.check_alive()
                    ctx.sql(f"TRUNCATE {TABLE}", db=H.BENCH_DB)
                    rec = copy_run(ctx, t, "in", datafile, nbytes, pgcpu)
                    rec["round"] = rnd + 1
                    if rec["ok"] and rec.get("rows") != rows:
                        rec["ok"], rec["error"] = False, f"row count {rec.get('rows')} != {rows}"
                    runs.append(rec)
                    _report(rec, rnd)
                # set hint bits / visibility map once so every COPY OUT reads the same state
                ctx.sql(f"VACUUM ANALYZE {TABLE}", db=H.BENCH_DB)
                for t in order:
                    t.check_alive()
                    rec = copy_run(ctx, t, "out", datafile, out_bytes, pgcpu)
                    rec["round"] = rnd + 1
                    runs.append(rec)
                    _report(rec, rnd)
        except (H.Interrupted, KeyboardInterrupt) as e:
            interrupted = str(e) or "SIGINT"
            H.log(f"interrupted ({interrupted}); writing partial results")
    finally:
        ctx.pm.stop_all()

    H.require_runs(runs, interrupted)
    names = [t.name for t in targets]
    meta = {
        "started": started, "finished": H.now_iso(), "interrupted": interrupted,
        "loadavg_1m": {"start": load_start, "end": H.loadavg()},
        "machine": H.machine_info(), "versions": H.versions(ctx),
        "parameters": {"size_mb": args.size_mb, "bytes": nbytes, "out_bytes": out_bytes,
                       "rows": rows, "rounds": args.rounds, "sslmode": args.sslmode,
                       "table": TABLE, "rss_sample_interval_s": 0.05},
        "targets": {t.name: {"host": t.host, "port": t.port, **t.info} for t in targets},
        "upstream_tls": {t.name: t.info.get("upstream_tls") for t in targets},
    }
    summary = summarize(runs, names)
    H.ensure_results_dir(args.out)
    (args.out / "copy_latest.json").write_text(json.dumps(
        {"meta": meta, "summary": summary, "runs": runs}, indent=2, ensure_ascii=False) + "\n")
    write_markdown(args.out / "copy_latest.md", meta, summary, names)
    print()
    print(main_table(summary, markdown=False))
    print()
    print(f"wrote {args.out / 'copy_latest.md'}, {args.out / 'copy_latest.json'}")
    if interrupted:
        return 130
    return 1 if any(not r["ok"] for r in runs) else 0


def _report(rec, rnd):
    extra = ""
    if rec.get("proxy_peak_rss_kib"):
        extra = (f" peakRSS={rec['proxy_peak_rss_kib'] / 1024:.1f}MiB"
                 f" cpu={rec.get('proxy_cpu_ms_per_mib', 0):.2f}ms/MiB")
    H.log(f"r{rnd + 1} {rec['direction']:3} {rec['target']:9} " +
          (f"{rec['wall_s']:.3f}s {rec['mib_per_s']:8.1f} MiB/s{extra}" if rec["ok"]
           else f"FAILED: {rec.get('error', '')[:300]}"))


if __name__ == "__main__":
    H.run_main(main)
