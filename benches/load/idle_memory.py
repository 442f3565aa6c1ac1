#!/usr/bin/env python3
"""Memory cost of idle client connections: pgbouncer vs pgstepup.

For each proxy: start it, read its RSS, open N client connections that finish
the PostgreSQL startup handshake (stdlib sockets: StartupMessage 3.0 as
user postgres to db pgstepup_bench, trust auth, read until ReadyForQuery) and
then sit idle, read the RSS again; (after - before) / N is the cost of one idle
connection.  Then every connection runs one query with a large result (so
buffers grow), goes idle again, and the RSS is read a third time: this is
where "buffers shrink when idle" shows.  Finally all connections are closed.

N is capped by what PostgreSQL allows: pgstepup opens one upstream connection
per client during the handshake, and pgbouncer in session mode needs one per
client once it runs a query.  The server configuration is never changed.

    python3 benches/load/idle_memory.py
    python3 benches/load/idle_memory.py --connections 50 --query-bytes 0

Writes results/idle_memory.md and results/idle_memory.json.  Stdlib only.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import struct
import sys
import time
from pathlib import Path

sys.dont_write_bytecode = True
sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness as H  # noqa: E402

TARGET_KIB = 64  # the target: under 64 KiB of RSS per idle connection


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="RSS per idle client connection: pgbouncer vs pgstepup",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--connections", type=int, default=1000,
                   help="idle client connections to open per proxy (capped by what "
                        "PostgreSQL's max_connections leaves free, see --headroom)")
    p.add_argument("--headroom", type=int, default=10,
                   help="server connections left free beyond superuser_reserved_connections "
                        "and the connections already in use")
    p.add_argument("--query-bytes", type=int, default=256 * 1024,
                   help="after the idle measurement, each connection runs "
                        "SELECT repeat('x', BYTES) once and goes idle again; 0 = skip")
    p.add_argument("--settle", type=float, default=2.0,
                   help="seconds to wait before each RSS reading")
    p.add_argument("--connect-timeout", type=float, default=15.0,
                   help="seconds allowed for one connection's handshake or query")
    H.add_common_args(p, default_rounds=1)
    a = p.parse_args(argv)
    if a.connections < 1 or a.rounds < 1 or a.headroom < 0 or a.query_bytes < 0:
        p.error("--connections and --rounds must be >= 1, --headroom and --query-bytes >= 0")
    return a


# --------------------------------------------------------------------------
# minimal PostgreSQL frontend (protocol 3.0, trust auth only)
# --------------------------------------------------------------------------

class PgError(Exception):
    pass


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise PgError("connection closed by server")
        buf += chunk
    return bytes(buf)


def _read_msg(sock: socket.socket) -> tuple[bytes, bytes]:
    head = _recv_exact(sock, 5)
    kind, length = head[:1], struct.unpack("!i", head[1:])[0]
    return kind, _recv_exact(sock, length - 4) if length > 4 else b""


def _error_text(body: bytes) -> str:
    fields = {}
    for part in body.split(b"\0"):
        if part:
            fields[part[:1]] = part[1:].decode(errors="replace")
    return f"{fields.get(b'S', 'ERROR')} {fields.get(b'C', '?')}: {fields.get(b'M', '')}"


def _until_ready(sock: socket.socket) -> int:
    """Read messages until ReadyForQuery; return the bytes received."""
    total = 0
    while True:
        kind, body = _read_msg(sock)
        total += 5 + len(body)
        if kind == b"E":
            raise PgError(_error_text(body))
        if kind == b"R":
            code = struct.unpack("!i", body[:4])[0]
            if code != 0:
                raise PgError(f"server asks for authentication (code {code}); this script "
                              "needs trust auth for the benchmark user")
        elif kind == b"Z":
            return total


def pg_connect(host: str, port: int, user: str, db: str, timeout: float) -> socket.socket:
    sock = socket.create_connection((host, port), timeout=timeout)
    try:
        params = b"".join(k + b"\0" + v.encode() + b"\0" for k, v in (
            (b"user", user), (b"database", db), (b"application_name", "pgstepup-bench-idle")))
        body = struct.pack("!i", 196608) + params + b"\0"
        sock.sendall(struct.pack("!i", len(body) + 4) + body)
        _until_ready(sock)
    except BaseException:
        sock.close()
        raise
    return sock


def pg_query(sock: socket.socket, sql: str) -> int:
    q = sql.encode() + b"\0"
    sock.sendall(b"Q" + struct.pack("!i", len(q) + 4) + q)
    return _until_ready(sock)


def pg_close(sock: socket.socket) -> None:
    try:
        sock.sendall(b"X\0\0\0\4")
    except OSError:
        pass
    sock.close()


# --------------------------------------------------------------------------
# measurement
# --------------------------------------------------------------------------

def tree_mem_kb(pid: int) -> dict:
    """VmRSS and RssAnon (kB) summed over the process and its descendants."""
    rss = anon = 0
    pids = H.proc_tree_pids(pid)
    for p in pids:
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        rss += int(line.split()[1])
                    elif line.startswith("RssAnon:"):
                        anon += int(line.split()[1])
        except (FileNotFoundError, ProcessLookupError):
            pass
    return {"rss_kb": rss, "rss_anon_kb": anon, "processes": len(pids)}


def server_backends(ctx) -> int:
    return int(ctx.sql("select count(*) from pg_stat_activity where backend_type = "
                       "'client backend' and pid <> pg_backend_pid()"))


def wait_backends_drop(ctx, limit: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server_backends(ctx) <= limit:
            return
        time.sleep(0.3)
    H.log(f"note: still more than {limit} client backends after {timeout:.0f}s")


def measure(ctx, t: H.Target, n: int, args) -> dict:
    pid = t.pid
    rec = {"target": t.name, "requested": n, "samples": []}

    def sample(label: str, opened: int) -> dict:
        m = tree_mem_kb(pid)
        m.update(label=label, connections=opened)
        rec["samples"].append(m)
        return m

    time.sleep(args.settle)
    before = sample("before", 0)
    socks: list[socket.socket] = []
    marks = {max(1, round(n * q / 4)) for q in (1, 2, 3)}
    t0 = time.monotonic()
    try:
        for i in range(n):
            try:
                socks.append(pg_connect(t.host, t.port, ctx.user, H.BENCH_DB,
                                        args.connect_timeout))
            except (OSError, PgError) as e:
                rec["connect_error"] = f"connection {i + 1}: {e}"
                H.log(f"{t.name}: connection {i + 1} of {n} failed ({e}); "
                      f"measuring with {len(socks)}")
                break
            if len(socks) in marks:
                sample("opening", len(socks))
            if (i + 1) % 200 == 0:
                t.check_alive()
        rec["connect_s"] = round(time.monotonic() - t0, 3)
        got = rec["connections"] = len(socks)
        if not got:
            raise H.HarnessError(f"no connection through {t.name}: {rec.get('connect_error')}")
        t.check_alive()
        time.sleep(args.settle)
        idle = sample("idle", got)
        rec["rss_before_kb"] = before["rss_kb"]
        rec["rss_idle_kb"] = idle["rss_kb"]
        rec["kib_per_conn_idle"] = (idle["rss_kb"] - before["rss_kb"]) / got
        rec["anon_kib_per_conn_idle"] = (idle["rss_anon_kb"] - before["rss_anon_kb"]) / got
        # least-squares slope over the samples taken while opening (robust to one
        # odd reading; equals the simple ratio when growth is linear)
        pts = [(s["connections"], s["rss_kb"]) for s in rec["samples"]
               if s["label"] in ("before", "opening")] + [(got, idle["rss_kb"])]
        if len({x for x, _ in pts}) > 1:
            mx = statistics.fmean(x for x, _ in pts)
            my = statistics.fmean(y for _, y in pts)
            rec["kib_per_conn_idle_slope"] = (
                sum((x - mx) * (y - my) for x, y in pts) / sum((x - mx) ** 2 for x, _ in pts))
        if args.query_bytes:
            sql = f"select repeat('x', {args.query_bytes})"
            t1 = time.monotonic()
            recv = 0
            for s in socks:
                recv += pg_query(s, sql)
            rec["query_s"] = round(time.monotonic() - t1, 3)
            rec["query_bytes_received"] = recv
            t.check_alive()
            time.sleep(args.settle)
            aq = sample("idle_after_query", got)
            rec["rss_after_query_kb"] = aq["rss_kb"]
            rec["kib_per_conn_after_query"] = (aq["rss_kb"] - before["rss_kb"]) / got
    finally:
        for s in socks:
            pg_close(s)
    time.sleep(args.settle)
    rec["rss_after_close_kb"] = sample("after_close", 0)["rss_kb"]
    return rec


# --------------------------------------------------------------------------
# reports
# --------------------------------------------------------------------------

def _med(vals):
    vals = [v for v in vals if v is not None]
    return statistics.median(vals) if vals else None


def summarize(runs, names):
    out = {}
    for tn in names:
        rs = [r for r in runs if r["target"] == tn]
        out[tn] = {k: _med([r.get(k) for r in rs]) for k in (
            "connections", "rss_before_kb", "rss_idle_kb", "kib_per_conn_idle",
            "kib_per_conn_idle_slope", "anon_kib_per_conn_idle", "rss_after_query_kb",
            "kib_per_conn_after_query", "rss_after_close_kb")}
        out[tn]["rounds"] = len(rs)
    return out


def table(summary, names, markdown, query_bytes):
    headers = ["proxy", "N", "RSS before KiB", "RSS N idle KiB", "KiB/conn idle"]
    if query_bytes:
        headers += ["RSS after query KiB", "KiB/conn after query"]
    headers += ["RSS closed KiB",
                f"< {TARGET_KIB} KiB/conn" + (" (idle / after query)" if query_bytes else "")]

    def ok(v):
        return "n/a" if v is None else ("yes" if v < TARGET_KIB else "NO")
    rows = []
    for tn in names:
        s = summary[tn]
        row = [tn, H.fmt_num(s["connections"]), H.fmt_num(s["rss_before_kb"]),
               H.fmt_num(s["rss_idle_kb"]), H.fmt_num(s["kib_per_conn_idle"], ".1f")]
        if query_bytes:
            row += [H.fmt_num(s["rss_after_query_kb"]),
                    H.fmt_num(s["kib_per_conn_after_query"], ".1f")]
        row += [H.fmt_num(s["rss_after_close_kb"]),
                ok(s["kib_per_conn_idle"]) + (f" / {ok(s['kib_per_conn_after_query'])}"
                                              if query_bytes else "")]
        rows.append(row)
    return H.render_table(headers, rows, markdown)


def write_markdown(path, meta, summary, names, runs):
    m, v, p = meta["machine"], meta["versions"], meta["parameters"]
    lim = meta["server_limits"]
    lines = [
        "# Idle client connections: proxy RSS per connection", "",
        f"- date: {meta['finished']}" + (" — **INTERRUPTED, partial results**"
                                          if meta.get("interrupted") else ""),
        f"- machine: {m['nproc']} CPUs, {m['cpu_model']}, {m['memory']}, kernel {m['kernel']}",
        f"- PostgreSQL: {v['postgresql']}",
        f"- pgbouncer: {v['pgbouncer']} (pool_mode=session, default_pool_size N + 10, "
        f"max_client_conn max(N + 10, 200))",
        f"- pgstepup: git commit {v['pgstepup_git_commit']}"
        + (f", binary `{v['pgstepup_binary']}` ({v.get('pgstepup_version')})"
           if v.get("pgstepup_binary") else ", **not run** (--no-pgstepup)"),
        f"- connections: requested {p['connections']}, used N = {p['n']} "
        f"(PostgreSQL max_connections {lim['max_connections']}, "
        f"superuser_reserved_connections {lim['superuser_reserved_connections']}, "
        f"{lim['in_use_at_start']} client backends already in use, headroom {p['headroom']})",
        f"- rounds {p['rounds']} (medians), settle {p['settle']} s before each reading, "
        f"query phase: " + (f"`select repeat('x', {p['query_bytes']})` once per connection"
                            if p["query_bytes"] else "off"),
        "",
        table(summary, names, True, p["query_bytes"]), "",
        "RSS = VmRSS from /proc/PID/status, summed over the proxy process and its "
        "children (pgbouncer and pgstepup are each one process). KiB/conn idle = "
        "(RSS with N idle connections − RSS before) / N. KiB/conn after query = the same "
        "after every connection ran the query once and went idle again: if a proxy keeps "
        "the buffers a large result grew, it shows here. RSS closed = after all "
        "connections closed (the allocator need not return freed memory to the OS).", "",
        f"Issue target: idle client connections cost under {TARGET_KIB} KiB each in RSS "
        "(buffers shrink when idle); the last column checks the idle figure and, with the "
        "query phase, the figure after the query (only then do grown buffers show).", "",
    ]
    if p["n"] < p["connections"]:
        lines += [
            f"**N is {p['n']}, not {p['connections']}.** pgstepup opens one PostgreSQL "
            "connection per client during the handshake and pgbouncer in session mode "
            "needs one per client once it runs a query, so N is limited by the server's "
            "max_connections. The server configuration was not changed; to measure "
            f"{p['connections']} raise max_connections (restart needed) and rerun. "
            "RSS per connection is a slope, so it should carry over to larger N unless "
            "the proxy has per-N structures that grow non-linearly.", ""]
    errs = [f"- {r['target']}: {r['connect_error']}" for r in runs if r.get("connect_error")]
    if errs:
        lines += ["Connection errors:", ""] + errs + [""]
    lines += ["PostgreSQL's own per-connection memory (a backend process per "
              "connection) is out of scope.", ""]
    path.write_text("\n".join(lines))


# --------------------------------------------------------------------------

def main():
    args = parse_args()
    ctx = H.Ctx(args)
    ctx.check_server()
    ctx.ensure_database(None)
    started = H.now_iso()
    maxc = int(ctx.sql("show max_connections"))
    reserved = int(ctx.sql("show superuser_reserved_connections"))
    in_use = server_backends(ctx)
    avail = maxc - reserved - in_use - args.headroom
    if avail < 1:
        raise H.HarnessError(f"no server connections to spare: max_connections {maxc}, "
                             f"reserved {reserved}, in use {in_use}, headroom {args.headroom}")
    n = min(args.connections, avail)
    if n < args.connections:
        H.log(f"using N={n} connections, not {args.connections}: PostgreSQL max_connections="
              f"{maxc}, superuser_reserved_connections={reserved}, {in_use} in use, "
              f"headroom {args.headroom} (server configuration left unchanged)")
    runs, interrupted, names = [], None, ["pgbouncer"] + (["pgstepup"] if ctx.pgstepup else [])
    try:
        for rnd in range(args.rounds):
            order = names if rnd % 2 == 0 else names[::-1]
            for tn in order:
                if tn == "pgbouncer":
                    t = ctx.start_pgbouncer(max_client_conn=max(n + 10, 200),
                                            default_pool_size=n + 10)
                else:
                    # Passthrough: these raw clients speak no SCRAM (and stay connected).
                    t = ctx.start_pgstepup(scram=False)
                try:
                    H.log(f"round {rnd + 1}: {tn}: opening {n} idle connections")
                    rec = measure(ctx, t, n, args)
                    rec["round"] = rnd + 1
                    runs.append(rec)
                    H.log(f"round {rnd + 1}: {tn}: N={rec['connections']} "
                          f"{rec['rss_before_kb']:,} -> {rec['rss_idle_kb']:,} kB, "
                          f"{rec['kib_per_conn_idle']:.1f} KiB/conn idle"
                          + (f", {rec['kib_per_conn_after_query']:.1f} KiB/conn after query"
                             if "kib_per_conn_after_query" in rec else ""))
                finally:
                    ctx.pm.stop(t.managed)
                    ctx.pm.procs.remove(t.managed)
                wait_backends_drop(ctx, in_use)
    except (H.Interrupted, KeyboardInterrupt) as e:
        interrupted = str(e) or "SIGINT"
        H.log(f"interrupted ({interrupted}); writing partial results")
    finally:
        ctx.pm.stop_all()
    H.require_runs(runs, interrupted, "measurement")
    names = [tn for tn in names if any(r["target"] == tn for r in runs)]
    n_used = min(r["connections"] for r in runs)
    meta = {
        "started": started, "finished": H.now_iso(), "interrupted": interrupted,
        "machine": H.machine_info(), "versions": H.versions(ctx),
        "server_limits": {"max_connections": maxc, "superuser_reserved_connections": reserved,
                          "in_use_at_start": in_use},
        "parameters": {"connections": args.connections, "n": n_used, "headroom": args.headroom,
                       "query_bytes": args.query_bytes, "settle": args.settle,
                       "rounds": args.rounds, "sslmode": args.sslmode},
        "target_kib_per_conn": TARGET_KIB,
    }
    summary = summarize(runs, names)
    H.ensure_results_dir(args.out)
    (args.out / "idle_memory.json").write_text(json.dumps(
        {"meta": meta, "summary": summary, "runs": runs}, indent=2, ensure_ascii=False) + "\n")
    write_markdown(args.out / "idle_memory.md", meta, summary, names, runs)
    print()
    print(table(summary, names, False, args.query_bytes))
    if n_used < args.connections:
        print(f"\nN={n_used} (not {args.connections}): limited by PostgreSQL "
              f"max_connections={maxc}; see idle_memory.md")
    print(f"\nwrote {args.out / 'idle_memory.md'}, {args.out / 'idle_memory.json'}")
    return 130 if interrupted else 0


if __name__ == "__main__":
    H.run_main(main)
