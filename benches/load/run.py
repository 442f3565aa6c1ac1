#!/usr/bin/env python3
"""pgbench select-only load benchmark: direct PostgreSQL vs pgbouncer vs pgstepup.

    python3 benches/load/run.py --duration 10 --rounds 3
    python3 benches/load/run.py --duration 3 --rounds 1 --no-pgstepup   # smoke test

See benches/load/README.md.  Stdlib only.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from xml.sax.saxutils import escape

sys.dont_write_bytecode = True  # keep benches/load free of __pycache__
sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness as H  # noqa: E402

MODES = ("simple", "extended", "prepared")


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="pgbench -S throughput/CPU: direct vs pgbouncer vs pgstepup",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--duration", type=int, default=10, help="seconds per pgbench run")
    p.add_argument("--clients", type=H.parse_int_list, default=[1, 8, 32],
                   help="comma-separated client counts (default 1,8,32)")
    p.add_argument("--modes", default="simple,extended,prepared",
                   help="comma-separated pgbench -M query modes")
    p.add_argument("--scale", type=int, default=10, help="pgbench scale factor")
    p.add_argument("--warmup", type=int, default=5,
                   help="seconds of unrecorded direct pgbench -S before measuring (0 = none)")
    p.add_argument("--sampling-rate", type=float, default=0.2,
                   help="fraction of transactions pgbench --log records for the p50/p99 "
                        "latency (pgbench --sampling-rate)")
    p.add_argument("--no-latency-log", action="store_true",
                   help="don't pass --log to pgbench (no p50/p99 latency)")
    H.add_common_args(p)
    a = p.parse_args(argv)
    a.modes = [m.strip() for m in a.modes.split(",") if m.strip()]
    bad = [m for m in a.modes if m not in MODES]
    if bad or not a.modes:
        p.error(f"--modes must be a subset of {','.join(MODES)}; got {bad or 'nothing'}")
    if a.duration < 1 or a.rounds < 1 or a.scale < 1:
        p.error("--duration, --rounds and --scale must be >= 1")
    if not 0 < a.sampling_rate <= 1:
        p.error("--sampling-rate must be in (0, 1]")
    return a


# --------------------------------------------------------------------------
# one pgbench run
# --------------------------------------------------------------------------

RE = {
    "transactions": re.compile(r"number of transactions actually processed: (\d+)"),
    "failed": re.compile(r"number of failed transactions: (\d+)"),
    "latency_ms": re.compile(r"latency average = ([\d.]+) ms"),
    "conn_ms": re.compile(r"initial connection time = ([\d.]+) ms"),
    "tps": re.compile(r"tps = ([\d.]+) \(without initial connection time\)"),
}


def children_cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def pgbench_cmd(ctx, t, mode, clients, duration, log_prefix=None, sampling_rate=None):
    extra = []
    if log_prefix is not None:
        extra = ["--log", f"--log-prefix={log_prefix}"]
        if sampling_rate is not None and sampling_rate < 1:
            extra.append(f"--sampling-rate={sampling_rate:g}")
    return [ctx.pgbench, "-h", t.host, "-p", str(t.port), "-U", ctx.user,
            "-S", "-n", "-M", mode, "-c", str(clients), "-j", str(min(clients, 2)),
            "-T", str(duration)] + extra + [H.BENCH_DB]


def percentile(sorted_vals, q):
    """Nearest-rank percentile (q in 0..100) of an ascending list."""
    if not sorted_vals:
        return None
    k = max(0, math.ceil(q / 100 * len(sorted_vals)) - 1)
    return sorted_vals[k]


def read_latency_logs(logdir: Path) -> dict:
    """Parse pgbench per-transaction logs (one file per pgbench thread:
    PREFIX.PID, PREFIX.PID.1, ...).  Line format (PostgreSQL 15):
        client_id transaction_no time script_no time_epoch time_us [...]
    where `time` is the transaction latency in µs, or `failed`/`skipped`."""
    lat, other, files = [], 0, 0
    for f in sorted(logdir.iterdir()):
        files += 1
        with open(f, "rb") as fh:
            for line in fh:
                parts = line.split(None, 3)
                if len(parts) >= 3 and parts[2].isdigit():
                    lat.append(int(parts[2]))
                else:
                    other += 1
    lat.sort()
    return {"latency_samples": len(lat), "latency_log_other_lines": other,
            "latency_log_files": files,
            "latency_p50_us": percentile(lat, 50), "latency_p99_us": percentile(lat, 99),
            "latency_max_us": lat[-1] if lat else None}


def run_one(ctx, t, mode, clients, duration, pgcpu, sampling_rate=None) -> dict:
    """sampling_rate None = no pgbench --log (no percentiles)."""
    logdir = None
    if sampling_rate is not None:
        logdir = Path(tempfile.mkdtemp(prefix="pgstepup-bench-lat-"))
        ctx.pm.tmpdirs.append(logdir)  # removed on exit/interrupt if we don't get to it
    try:
        return _run_one(ctx, t, mode, clients, duration, pgcpu, sampling_rate, logdir)
    finally:
        if logdir is not None:
            shutil.rmtree(logdir, ignore_errors=True)
            if logdir in ctx.pm.tmpdirs:
                ctx.pm.tmpdirs.remove(logdir)


def _run_one(ctx, t, mode, clients, duration, pgcpu, sampling_rate, logdir) -> dict:
    cmd = pgbench_cmd(ctx, t, mode, clients, duration,
                      log_prefix=str(logdir / "pgbench_log") if logdir else None,
                      sampling_rate=sampling_rate)
    rec = {"target": t.name, "mode": mode, "clients": clients, "duration_s": duration,
           "command": " ".join(cmd), "loadavg_1m_before": H.loadavg()}
    px0 = H.proc_cpu_ticks(t.pid) if t.pid else None
    pu0 = H.proc_user_ticks(t.pid) if t.pid else None
    pg0 = pgcpu.ticks()
    cl0 = children_cpu_s()
    w0 = time.monotonic()
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, env=ctx.env,
                           timeout=duration + 120)
        rc, out, err = r.returncode, r.stdout, r.stderr
    except subprocess.TimeoutExpired as e:
        out = e.stdout or ""
        if isinstance(out, bytes):
            out = out.decode(errors="replace")
        rc, err = None, "pgbench timed out"
    rec["wall_s"] = round(time.monotonic() - w0, 3)
    cl1 = children_cpu_s()
    time.sleep(0.25)  # let backends/proxy finish disconnect work before the 2nd snapshot
    px1 = H.proc_cpu_ticks(t.pid) if t.pid else None
    pu1 = H.proc_user_ticks(t.pid) if t.pid else None
    pg1 = pgcpu.ticks()
    rec["returncode"] = rc
    for k, rx in RE.items():
        m = rx.search(out)
        rec[k] = (float(m.group(1)) if k in ("tps", "latency_ms", "conn_ms")
                  else int(m.group(1))) if m else None
    ok = rc == 0 and rec["tps"] is not None and rec["transactions"]
    rec["ok"] = bool(ok)
    if not ok:
        rec["error"] = (err.strip() or out.strip())[-1500:]
    n = rec["transactions"] or 0
    if px0 is not None and px1 is not None:
        rec["proxy_cpu_s"] = (px1 - px0) / H.CLK_TCK
        rec["proxy_cpu_us_per_txn"] = rec["proxy_cpu_s"] * 1e6 / n if n else None
    if pu0 is not None and pu1 is not None:
        rec["proxy_user_us_per_txn"] = (pu1 - pu0) / H.CLK_TCK * 1e6 / n if n else None
    if pg0 is not None and pg1 is not None:
        rec["pg_cpu_s"] = (pg1 - pg0) / H.CLK_TCK
        rec["pg_cpu_us_per_txn"] = rec["pg_cpu_s"] * 1e6 / n if n else None
    rec["pgbench_cpu_s"] = round(cl1 - cl0, 4)
    rec["pgbench_cpu_us_per_txn"] = rec["pgbench_cpu_s"] * 1e6 / n if n else None
    if logdir is not None:
        rec["latency_sampling_rate"] = sampling_rate
        try:
            rec.update(read_latency_logs(logdir))
        except OSError as e:
            rec["latency_log_error"] = str(e)
        if rec["ok"] and not rec.get("latency_samples"):
            H.log(f"note: no latency samples in pgbench --log output for {t.name} "
                  f"{mode}/{clients}")
    return rec


# --------------------------------------------------------------------------
# summary / reports
# --------------------------------------------------------------------------

def _med(vals):
    vals = [v for v in vals if v is not None]
    return statistics.median(vals) if vals else None


def summarize(runs, target_names, modes, clients):
    out = []
    for mode in modes:
        for c in clients:
            row = {"mode": mode, "clients": c, "targets": {}}
            for tn in target_names:
                rs = [r for r in runs if r["mode"] == mode and r["clients"] == c
                      and r["target"] == tn and r["ok"]]
                tps = [r["tps"] for r in rs]
                row["targets"][tn] = {
                    "n": len(rs),
                    "tps_median": _med(tps),
                    "tps_min": min(tps) if tps else None,
                    "tps_max": max(tps) if tps else None,
                    "latency_ms_median": _med([r["latency_ms"] for r in rs]),
                    "p50_us_median": _med([r.get("latency_p50_us") for r in rs]),
                    "p99_us_median": _med([r.get("latency_p99_us") for r in rs]),
                    "proxy_cpu_us_per_txn": _med([r.get("proxy_cpu_us_per_txn") for r in rs]),
                    "proxy_user_us_per_txn": _med([r.get("proxy_user_us_per_txn")
                                                   for r in rs]),
                    "pg_cpu_us_per_txn": _med([r.get("pg_cpu_us_per_txn") for r in rs]),
                    "pgbench_cpu_us_per_txn": _med([r.get("pgbench_cpu_us_per_txn")
                                                    for r in rs]),
                    "failed_runs": sum(1 for r in runs if r["mode"] == mode and
                                       r["clients"] == c and r["target"] == tn
                                       and not r["ok"]),
                }
            b = row["targets"].get("pgbouncer", {}).get("p99_us_median")
            s = row["targets"].get("pgstepup", {}).get("p99_us_median")
            row["p99_ratio_pgstepup_pgbouncer"] = _ratio(s, b)
            out.append(row)
    return out


def _ratio(a, b):
    return a / b if (a is not None and b) else None


def main_table(summary, markdown):
    headers = ["mode", "clients", "direct TPS", "pgbouncer TPS", "pgstepup TPS",
               "pgbouncer/direct", "pgstepup/direct", "pgstepup/pgbouncer",
               "pgbouncer µs CPU/txn", "pgstepup µs CPU/txn", "pgbouncer µs user/txn",
               "pgstepup µs user/txn", "p99 pgstepup/pgbouncer"]
    rows = []
    for row in summary:
        t = row["targets"]

        def g(tn, k):
            return t.get(tn, {}).get(k)

        def tps(tn):
            if tn not in t:
                return "n/a"
            if t[tn]["n"] == 0:
                return "FAILED" if t[tn]["failed_runs"] else "n/a"
            return H.fmt_num(t[tn]["tps_median"])
        d, b, s = (g(x, "tps_median") for x in H.ALL_TARGETS)
        rows.append([row["mode"], str(row["clients"]), tps("direct"), tps("pgbouncer"),
                     tps("pgstepup"),
                     H.fmt_num(_ratio(b, d), ".3f"), H.fmt_num(_ratio(s, d), ".3f"),
                     H.fmt_num(_ratio(s, b), ".3f"),
                     H.fmt_num(g("pgbouncer", "proxy_cpu_us_per_txn"), ".1f"),
                     H.fmt_num(g("pgstepup", "proxy_cpu_us_per_txn"), ".1f"),
                     H.fmt_num(g("pgbouncer", "proxy_user_us_per_txn"), ".1f"),
                     H.fmt_num(g("pgstepup", "proxy_user_us_per_txn"), ".1f"),
                     H.fmt_num(row.get("p99_ratio_pgstepup_pgbouncer"), ".3f")])
    return H.render_table(headers, rows, markdown)


def paired_ratios(runs):
    """pgstepup/pgbouncer throughput within each round, by (mode, clients), in round order.

    A round runs the targets of one cell back to back, so the two proxies share the host's
    drift of those seconds; medians taken over rounds target by target do not pair them, and
    the drift between rounds is larger than the proxies' difference. `runs` may pool several
    runs of the harness as long as each record's "round" tells them apart.
    """
    pgbouncer = {(r["mode"], r["clients"], r["round"]): r for r in runs
                 if r["ok"] and r["target"] == "pgbouncer"}
    out = {}
    for r in runs:
        b = pgbouncer.get((r["mode"], r["clients"], r["round"]))
        if r["ok"] and r["target"] == "pgstepup" and b and b["tps"]:
            out.setdefault((r["mode"], r["clients"]), []).append(r["tps"] / b["tps"])
    return out


# Two-sided 95% quantiles of Student's t for 1..30 degrees of freedom.
T_975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
         2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
         2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def t_975(df: int) -> float:
    """Student's t two-sided 95% quantile; past the table, the first terms of its expansion
    around the normal quantile (within 0.0005 there)."""
    if df <= len(T_975):
        return T_975[df - 1]
    z = 1.959964
    return z + (z ** 3 + z) / (4 * df) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * df ** 2)


def ratio_interval(ratios):
    """Geometric mean of within-round ratios and its 95% confidence interval (Student's t on
    the logarithms: the rounds are the samples); the interval is None for a single round."""
    logs = [math.log(r) for r in ratios]
    mean = statistics.fmean(logs)
    if len(logs) < 2:
        return math.exp(mean), None
    half = t_975(len(logs) - 1) * statistics.stdev(logs) / math.sqrt(len(logs))
    return math.exp(mean), (math.exp(mean - half), math.exp(mean + half))


def paired_table(runs, markdown):
    headers = ["mode", "clients", "rounds", "pgstepup/pgbouncer, median of rounds",
               "geometric mean", "95% interval", "min–max", "rounds at or above 1"]
    rows = []
    for (mode, clients), v in paired_ratios(runs).items():
        mean, interval = ratio_interval(v)
        rows.append([mode, str(clients), str(len(v)), f"{statistics.median(v):.3f}",
                     f"{mean:.3f}", f"{interval[0]:.3f}–{interval[1]:.3f}" if interval else "n/a",
                     f"{min(v):.3f}–{max(v):.3f}", f"{sum(x >= 1 for x in v)}/{len(v)}"])
    return H.render_table(headers, rows, markdown)


def p99_table(summary, target_names, markdown):
    headers = ["mode", "clients"] + [f"{tn} p99" for tn in target_names] + \
              ["pgstepup/pgbouncer p99"]
    rows = [[r["mode"], str(r["clients"])] +
            [H.fmt_num(r["targets"][tn]["p99_us_median"], ",.0f") for tn in target_names] +
            [H.fmt_num(r.get("p99_ratio_pgstepup_pgbouncer"), ".3f")]
            for r in summary]
    return H.render_table(headers, rows, markdown)


def p99_target_lines(summary):
    """The issue's target: p99 at 8 clients through pgstepup no worse than pgbouncer's."""
    out = []
    for r in summary:
        if r["clients"] != 8:
            continue
        q = r.get("p99_ratio_pgstepup_pgbouncer")
        if q is None:
            out.append(f"- {r['mode']}, 8 clients: n/a")
        else:
            b = r["targets"]["pgbouncer"]["p99_us_median"]
            s = r["targets"]["pgstepup"]["p99_us_median"]
            out.append(f"- {r['mode']}, 8 clients: pgstepup p99 {s:,.0f} µs vs pgbouncer "
                       f"{b:,.0f} µs (ratio {q:.3f}) — "
                       + ("**met**" if q <= 1 else "**not met**"))
    return out


def per_target_table(summary, target_names, key, spec, markdown):
    headers = ["mode", "clients"] + target_names
    rows = [[r["mode"], str(r["clients"])] +
            [H.fmt_num(r["targets"][tn][key], spec) for tn in target_names]
            for r in summary]
    return H.render_table(headers, rows, markdown)


def spread_table(summary, target_names, markdown):
    headers = ["mode", "clients"] + [f"{tn} min–max TPS (spread)" for tn in target_names]
    rows = []
    for r in summary:
        cells = [r["mode"], str(r["clients"])]
        for tn in target_names:
            x = r["targets"][tn]
            if x["n"] == 0:
                cells.append("n/a")
            else:
                sp = (x["tps_max"] - x["tps_min"]) / x["tps_median"] * 100
                cells.append(f"{x['tps_min']:,.0f}–{x['tps_max']:,.0f} ({sp:.1f}%)")
        rows.append(cells)
    return H.render_table(headers, rows, markdown)


def write_markdown(path, meta, summary, target_names, runs):
    m, v, p = meta["machine"], meta["versions"], meta["parameters"]
    lines = [
        "# pgstepup load benchmark (pgbench -S)", "",
        f"- date: {meta['finished']}" + (" — **INTERRUPTED, partial results**"
                                          if meta.get("interrupted") else ""),
        f"- machine: {m['nproc']} CPUs, {m['cpu_model']}, {m['memory']}, "
        f"kernel {m['kernel']}",
        f"- 1-min load average before/after (other work on the machine adds noise): "
        f"{meta['loadavg_1m']['start']} / {meta['loadavg_1m']['end']}",
        f"- PostgreSQL: {v['postgresql']}",
        f"- pgbench: {v['pgbench']}",
        f"- pgbouncer: {v['pgbouncer']} (pool_mode=session, default_pool_size=40"
        + (", server_lifetime=0: a new backend per client connection)"
           if p.get("pgbouncer_fresh_backends") else
           "; backends kept, warm, between pgbench runs)"),
        f"- pgstepup: git commit {v['pgstepup_git_commit']}"
        + (f", binary `{v['pgstepup_binary']}` ({v.get('pgstepup_version')}), scram auth, "
           + ("upstream.pool_size=0: a new backend per client connection"
              if p.get("pgbouncer_fresh_backends") else
              "upstream.pool_size=40: backends kept, warm, between pgbench runs")
           if v.get("pgstepup_binary") else ", **not run** (--no-pgstepup)"),
        f"- parameters: duration {p['duration']} s × rounds {p['rounds']}, "
        f"scale {p['scale']}, clients {','.join(map(str, p['clients']))}, "
        f"modes {','.join(p['modes'])}, "
        f"sslmode {p['sslmode']}, `pgbench -S -n -M MODE -c C -j min(C,2) -T {p['duration']}`",
        "- proxies reach PostgreSQL by: "
        + (f"its Unix socket in `{p['upstream_socket']}`" if p.get("upstream_socket")
           else "TCP (127.0.0.1)"),
        "- pgbench reaches every target by: "
        + ("its Unix socket" if p.get("client_socket") else "TCP (127.0.0.1)"),
        f"- TLS between target and PostgreSQL: "
        + ", ".join(f"{k}={'yes' if x else 'no'}" for k, x in meta["upstream_tls"].items()),
        "",
        "## Throughput (median TPS over rounds) and proxy CPU per transaction", "",
        main_table(summary, True), "",
        "Ratios > 1 mean the numerator is faster. µs CPU/txn = (utime+stime of the proxy "
        "process, all threads) / transactions, median over rounds; µs user/txn counts utime "
        "alone (the proxy's own code: the rest is kernel time in the socket system calls, "
        "the same calls for both proxies). On a machine with few "
        "cores the proxy, PostgreSQL and pgbench share the CPUs, so proxy CPU directly "
        "reduces throughput.", "",
        "## Latency average (ms, median over rounds)", "",
        per_target_table(summary, target_names, "latency_ms_median", ".3f", True), "",
    ]
    if p.get("sampling_rate") is not None:
        tl = p99_target_lines(summary)
        lines += [
            "## Latency p99 (µs)", "",
            p99_table(summary, target_names, True), "",
            f"Per-transaction latencies from `pgbench --log --sampling-rate="
            f"{p['sampling_rate']:g}` (latency as pgbench measures it: from sending the "
            "query to the end of the transaction, client side); nearest-rank p99 per run, "
            "median over rounds. pgstepup/pgbouncer below 1 means pgstepup's tail is "
            "shorter. With few transactions per run (short --duration, low sampling rate) "
            "p99 rests on a few hundred samples: see `latency_samples` in latest.json.", "",
        ] + (["Issue target \"p99 latency at 8 clients no worse than pgbouncer's\" "
              "(single-run numbers on a shared machine are noisy):", ""] + tl + [""]
             if tl else []) + [
            "## Latency p50 (µs, median over rounds)", "",
            per_target_table(summary, target_names, "p50_us_median", ",.0f", True), "",
        ]
    lines += [
        "## PostgreSQL server CPU per transaction (µs, all postgres processes)", "",
        per_target_table(summary, target_names, "pg_cpu_us_per_txn", ".1f", True), "",
        "## pgbench (client) CPU per transaction (µs)", "",
        per_target_table(summary, target_names, "pgbench_cpu_us_per_txn", ".1f", True), "",
        "## Run-to-run spread", "",
        spread_table(summary, target_names, True), "",
        "Spread = (max − min) / median across rounds; differences between targets "
        "smaller than the spread are noise.", "",
    ]
    if "pgstepup" in target_names and "pgbouncer" in target_names:
        lines += [
            "## pgstepup/pgbouncer within each round", "",
            paired_table(runs, True), "",
            "Each round runs a cell's targets back to back, so this pairs the proxies within "
            "the host's drift; `paired.py` pools several runs' `latest.json`.", "",
        ]
    lines += [
        "![throughput](throughput.svg)", "",
    ]
    failed = [(r["mode"], r["clients"], tn) for r in summary for tn in target_names
              if r["targets"][tn]["failed_runs"]]
    if failed:
        lines += ["## Failed runs", "",
                  "See `latest.json` for the error output of: " +
                  ", ".join(f"{tn} {mo}/{c}" for mo, c, tn in failed), ""]
    path.write_text("\n".join(lines))


# ---- SVG ---------------------------------------------------------------------

COLORS = {"direct": "#555555", "pgbouncer": "#1f77b4", "pgstepup": "#d62728"}
DASH = {"direct": "6,4", "pgbouncer": "", "pgstepup": ""}


def _nice_ceiling(x):
    if x <= 0:
        return 1.0, 0.2
    raw = x / 5
    mag = 10 ** math.floor(math.log10(raw))
    for f in (1, 2, 2.5, 5, 10):
        if raw <= f * mag:
            step = f * mag
            break
    return math.ceil(x / step) * step, step


def write_svg(path, meta, summary, target_names, modes, clients):
    pw, ph = 330, 260                     # plot area per panel
    ml, mr, mt, mb, gap = 80, 20, 90, 60, 30
    W = ml + len(modes) * pw + (len(modes) - 1) * gap + mr
    Hh = mt + ph + mb
    ymax_data = max([x["tps_max"] or 0 for r in summary for x in r["targets"].values()] + [1])
    ymax, ystep = _nice_ceiling(ymax_data * 1.05)
    cs = sorted(set(clients))
    lx = [math.log2(c) for c in cs]
    x0, x1 = min(lx), max(lx)
    if x1 == x0:
        x0, x1 = x0 - 1, x1 + 1
    pad = 0.06 * (x1 - x0)

    def X(i, c):
        left = ml + i * (pw + gap)
        return left + (math.log2(c) - x0 + pad) / (x1 - x0 + 2 * pad) * pw

    def Y(v):
        return mt + ph - v / ymax * ph

    s = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{Hh}" '
         f'viewBox="0 0 {W} {Hh}" font-family="DejaVu Sans, Helvetica, Arial, sans-serif" '
         f'font-size="12">',
         f'<rect width="{W}" height="{Hh}" fill="white"/>']
    m = meta["machine"]
    title = (f"pgbench -S throughput vs clients — {m['nproc']} CPUs, "
             f"{meta['parameters']['duration']} s × {meta['parameters']['rounds']} rounds "
             f"(median; whiskers = min–max)")
    s.append(f'<text x="{W / 2}" y="22" text-anchor="middle" font-size="15" '
             f'font-weight="bold">{escape(title)}</text>')
    # legend
    lxpos = W / 2 - 135 * len(target_names) / 2
    for k, tn in enumerate(target_names):
        xx = lxpos + k * 135
        s.append(f'<line x1="{xx}" y1="45" x2="{xx + 28}" y2="45" stroke="{COLORS[tn]}" '
                 f'stroke-width="2.5" stroke-dasharray="{DASH[tn]}"/>')
        s.append(f'<circle cx="{xx + 14}" cy="45" r="3.5" fill="{COLORS[tn]}"/>')
        s.append(f'<text x="{xx + 34}" y="49">{tn}</text>')
    for i, mode in enumerate(modes):
        left = ml + i * (pw + gap)
        s.append(f'<text x="{left + pw / 2}" y="{mt - 12}" text-anchor="middle" '
                 f'font-weight="bold">-M {mode}</text>')
        # grid + y ticks
        v = 0.0
        while v <= ymax + 1e-9:
            y = Y(v)
            s.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + pw}" y2="{y:.1f}" '
                     f'stroke="#e5e5e5"/>')
            if i == 0:
                s.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">'
                         f'{v:,.0f}</text>')
            v += ystep
        for c in cs:
            x = X(i, c)
            s.append(f'<line x1="{x:.1f}" y1="{mt}" x2="{x:.1f}" y2="{mt + ph}" '
                     f'stroke="#f0f0f0"/>')
            s.append(f'<text x="{x:.1f}" y="{mt + ph + 16}" text-anchor="middle">{c}</text>')
        s.append(f'<rect x="{left}" y="{mt}" width="{pw}" height="{ph}" fill="none" '
                 f'stroke="#333"/>')
        s.append(f'<text x="{left + pw / 2}" y="{mt + ph + 38}" text-anchor="middle">'
                 f'clients (log scale)</text>')
        for k, tn in enumerate(target_names):
            off = (k - (len(target_names) - 1) / 2) * 5  # keep whiskers apart
            pts = []
            for r in summary:
                if r["mode"] != mode:
                    continue
                x = r["targets"][tn]
                if x["tps_median"] is None:
                    continue
                pts.append((r["clients"], x["tps_median"], x["tps_min"], x["tps_max"]))
            pts.sort()
            if len(pts) > 1:
                d = " ".join(f"{X(i, c):.1f},{Y(v):.1f}" for c, v, _, _ in pts)
                s.append(f'<polyline points="{d}" fill="none" stroke="{COLORS[tn]}" '
                         f'stroke-width="2" stroke-dasharray="{DASH[tn]}"/>')
            for c, v, lo, hi in pts:
                x = X(i, c)
                if hi > lo:
                    s.append(f'<line x1="{x + off:.1f}" y1="{Y(lo):.1f}" x2="{x + off:.1f}" '
                             f'y2="{Y(hi):.1f}" stroke="{COLORS[tn]}" stroke-width="1.2"/>')
                    for yy in (Y(lo), Y(hi)):
                        s.append(f'<line x1="{x + off - 3:.1f}" y1="{yy:.1f}" '
                                 f'x2="{x + off + 3:.1f}" y2="{yy:.1f}" '
                                 f'stroke="{COLORS[tn]}" stroke-width="1.2"/>')
                s.append(f'<circle cx="{x:.1f}" cy="{Y(v):.1f}" r="3.5" fill="{COLORS[tn]}">'
                         f'<title>{tn} {mode} c={c}: {v:,.0f} TPS</title></circle>')
    s.append(f'<text transform="translate(18,{mt + ph / 2}) rotate(-90)" '
             f'text-anchor="middle">transactions per second</text>')
    s.append("</svg>")
    path.write_text("\n".join(s) + "\n")


# --------------------------------------------------------------------------

def main():
    args = parse_args()
    ctx = H.Ctx(args)          # resolves binaries (fails early if pgstepup missing)
    runs, targets, interrupted = [], [], None
    started, load_start = H.now_iso(), H.loadavg()
    if load_start is not None and load_start > (os.cpu_count() or 1) * 0.5:
        H.log(f"WARNING: machine already busy (1-min load {load_start:.2f} on "
              f"{os.cpu_count()} CPUs); results will be noisy")
    try:
        ctx.check_server()
        ctx.ensure_database(args.scale)
        maxc = int(ctx.sql("show max_connections"))
        need = max(args.clients) * (2 if args.no_pgstepup else 3) + 3
        if need > maxc:
            H.log(f"WARNING: max_connections={maxc} may be too low (pooled server "
                  f"connections linger between runs; rough need {need})")
        pgcpu = H.PgCpu(ctx)
        targets = ctx.start_targets()
        names = [t.name for t in targets]
        if args.warmup:
            H.log(f"warm-up: {args.warmup}s direct pgbench -S")
            subprocess.run(pgbench_cmd(ctx, targets[0], "simple", 2, args.warmup),
                           capture_output=True, env=ctx.env, timeout=args.warmup + 120)
        total = args.rounds * len(args.modes) * len(args.clients) * len(targets)
        H.log(f"{total} runs of {args.duration}s, expected ≈"
              f"{total * (args.duration + 1.5) / 60:.1f} min; targets: {', '.join(names)}")
        srate = None if args.no_latency_log else args.sampling_rate
        k = 0
        try:
            for rnd in range(args.rounds):
                order = targets[rnd % len(targets):] + targets[:rnd % len(targets)]
                for mode in args.modes:
                    for c in args.clients:
                        for t in order:
                            k += 1
                            t.check_alive()
                            rec = run_one(ctx, t, mode, c, args.duration, pgcpu,
                                          sampling_rate=srate)
                            rec["round"] = rnd + 1
                            runs.append(rec)
                            cpu = rec.get("proxy_cpu_us_per_txn")
                            H.log(f"[{k}/{total}] r{rnd + 1} {mode:8} c={c:<3} "
                                  f"{t.name:9} " + (
                                      f"tps={rec['tps']:>10,.1f} lat={rec['latency_ms']:.3f}ms"
                                      + (f" proxy={cpu:.1f}µs/txn" if cpu is not None else "")
                                      + (f" p99={rec['latency_p99_us']:,}µs"
                                         if rec.get("latency_p99_us") is not None else "")
                                      if rec["ok"] else f"FAILED: {rec.get('error', '')[:300]}"))
                            t.check_alive()
        except (H.Interrupted, KeyboardInterrupt) as e:
            interrupted = str(e) or "SIGINT"
            H.log(f"interrupted ({interrupted}); writing partial results")
    finally:
        ctx.pm.stop_all()

    H.require_runs(runs, interrupted)
    meta = {
        "started": started, "finished": H.now_iso(), "interrupted": interrupted,
        "loadavg_1m": {"start": load_start, "end": H.loadavg()},
        "machine": H.machine_info(), "versions": H.versions(ctx),
        "parameters": {"duration": args.duration, "rounds": args.rounds,
                       "clients": args.clients, "modes": args.modes, "scale": args.scale,
                       "warmup": args.warmup, "sslmode": args.sslmode,
                       "pgbouncer_fresh_backends": args.pgbouncer_fresh_backends,
                       "upstream_socket": args.upstream_socket,
                       "client_socket": args.client_socket,
                       "sampling_rate": None if args.no_latency_log else args.sampling_rate,
                       "pgstepup_upstream": args.pgstepup_upstream if ctx.pgstepup else None,
                       "clk_tck": H.CLK_TCK},
        "targets": {t.name: {"host": t.host, "port": t.port, **{
            k: v for k, v in t.info.items()}} for t in targets},
        "upstream_tls": {t.name: t.info.get("upstream_tls") for t in targets},
    }
    names = [t.name for t in targets]
    summary = summarize(runs, names, args.modes, args.clients)
    H.ensure_results_dir(args.out)
    # convenience view: p99 (µs, median over rounds) per mode / clients / target
    p99 = {m: {str(r["clients"]): {**{tn: r["targets"][tn]["p99_us_median"] for tn in names},
                                   "pgstepup/pgbouncer": r["p99_ratio_pgstepup_pgbouncer"]}
               for r in summary if r["mode"] == m} for m in args.modes}
    (args.out / "latest.json").write_text(json.dumps(
        {"meta": meta, "latency_p99_us": p99, "summary": summary, "runs": runs},
        indent=2, ensure_ascii=False) + "\n")
    write_markdown(args.out / "latest.md", meta, summary, names, runs)
    write_svg(args.out / "throughput.svg", meta, summary, names, args.modes, args.clients)

    print()
    print(main_table(summary, markdown=False))
    if "pgstepup" in names and "pgbouncer" in names:
        print()
        print(paired_table(runs, markdown=False))
    print()
    print(f"wrote {args.out / 'latest.md'}, {args.out / 'latest.json'}, "
          f"{args.out / 'throughput.svg'}")
    if interrupted:
        return 130
    return 1 if any(not r["ok"] for r in runs) else 0


if __name__ == "__main__":
    H.run_main(main)
