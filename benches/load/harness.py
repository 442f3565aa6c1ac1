"""Shared plumbing for the pgstepup load benchmarks (run.py, copy_bench.py).

Stdlib only.  Responsibilities:
  * locating binaries (pgbench, psql, pgbouncer, pgstepup),
  * preparing the benchmark database,
  * starting pgbouncer / pgstepup on free ports and *always* stopping them
    (try/finally + SIGINT/SIGTERM/SIGHUP handlers + atexit + PR_SET_PDEATHSIG),
  * CPU accounting from /proc (proxy process, PostgreSQL server processes),
  * machine / version metadata for the reports.
"""

from __future__ import annotations

import argparse
import atexit
import base64
import ctypes
import datetime as _dt
import hashlib
import hmac
import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent.parent
DEFAULT_OUT = HERE / "results"
BENCH_DB = "pgstepup_bench"
CLK_TCK = os.sysconf("SC_CLK_TCK")
ALL_TARGETS = ("direct", "pgbouncer", "pgstepup")

_t_start = time.monotonic()


def log(msg: str) -> None:
    print(f"[{time.monotonic() - _t_start:7.1f}s] {msg}", file=sys.stderr, flush=True)


class HarnessError(RuntimeError):
    """A problem that should abort the benchmark with a clear message."""


class Interrupted(BaseException):
    """Raised from our signal handlers (SIGINT/SIGTERM/SIGHUP)."""


# --------------------------------------------------------------------------
# CLI helpers shared by both scripts
# --------------------------------------------------------------------------

def add_common_args(p: argparse.ArgumentParser, default_rounds: int = 3) -> None:
    p.add_argument("--rounds", type=int, default=default_rounds,
                   help="measurement rounds; medians are reported (default %(default)s)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT,
                   help="output directory (default benches/load/results/)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--pgstepup", metavar="BIN", default=None,
                   help="pgstepup binary (default: $PGSTEPUP_BIN, else "
                        "<repo>/target/release/pgstepup)")
    g.add_argument("--no-pgstepup", action="store_true",
                   help="benchmark direct + pgbouncer only")
    p.add_argument("--pgstepup-upstream", default=None,
                   help="value passed to `pgstepup serve --upstream` (default "
                        "postgres://127.0.0.1:5432?sslmode=SSLMODE, with --sslmode below)")
    p.add_argument("--pgstepup-arg", action="append", default=[], metavar="ARG",
                   help="extra argument appended to the pgstepup command line (repeatable)")
    p.add_argument("--pg-host", default="127.0.0.1", help="PostgreSQL host (default %(default)s)")
    p.add_argument("--pg-port", type=int, default=5432, help="PostgreSQL port (default %(default)s)")
    p.add_argument("--pg-user", default="postgres", help="PostgreSQL user (default %(default)s)")
    p.add_argument("--pgbouncer-bin", default=None,
                   help="pgbouncer binary (default: from PATH or /usr/sbin/pgbouncer)")
    p.add_argument("--proxy-user", default=None,
                   help="when running as root, the user pgbouncer runs as "
                        "(default postgres, else nobody)")
    p.add_argument("--pgbouncer-fresh-backends", action="store_true",
                   help="each client connection gets a new PostgreSQL backend, as with "
                        "direct (pgbouncer server_lifetime = 0, pgstepup upstream.pool_size = "
                        "0); by default both proxies keep backends, warm, from one pgbench "
                        "run to the next")
    p.add_argument("--upstream-socket", metavar="DIR", default=None,
                   help="both proxies reach PostgreSQL by its Unix socket in DIR (such as "
                        "/var/run/postgresql) instead of TCP, as when a proxy runs on the "
                        "database host; pgbench still reaches each target over TCP")
    p.add_argument("--client-socket", action="store_true",
                   help="pgbench reaches every target by a Unix socket: PostgreSQL's in "
                        "--upstream-socket DIR (required), each proxy's own in its directory")
    p.add_argument("--sslmode", default="disable",
                   help="libpq sslmode for benchmark clients and pgbouncer's server "
                        "connections (default %(default)s, i.e. everything plaintext so "
                        "direct and proxied runs are comparable)")


PROXIES = ("pgbouncer", "pgstepup")
PROCESSED = re.compile(r"number of transactions actually processed: (\d+)")


def parse_counting_args(description: str, argv=None, extra=None) -> argparse.Namespace:
    """Arguments of the counting tools (`instructions.py`, `syscalls.py`): one fixed-size
    pgbench -S run per proxy and protocol mode. `extra` adds a tool's own arguments."""
    p = argparse.ArgumentParser(description=description,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--modes", default="simple,extended,prepared")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--transactions", type=int, default=2000,
                   help="transactions per client in each counted run")
    p.add_argument("--scale", type=int, default=10)
    if extra:
        extra(p)
    add_common_args(p, default_rounds=1)
    a = p.parse_args(argv)
    a.modes = [m for m in a.modes.split(",") if m]
    return a


def counted_pgbench(ctx, t, mode: str, clients: int, per_client: int) -> int:
    """Runs pgbench -S -t through target `t`; returns the transactions it processed."""
    cmd = [ctx.pgbench, "-h", t.host, "-p", str(t.port), "-U", ctx.user, "-S", "-n",
           "-M", mode, "-c", str(clients), "-j", str(min(clients, 2)),
           "-t", str(per_client), BENCH_DB]
    r = subprocess.run(cmd, capture_output=True, text=True, env=ctx.env, timeout=1800)
    m = PROCESSED.search(r.stdout)
    if r.returncode != 0 or not m:
        raise HarnessError(f"pgbench through {t.name} failed:\n{r.stdout[-800:]}"
                           f"{r.stderr[-800:]}")
    return int(m.group(1))


def count_each_proxy(args, count) -> tuple["Ctx", list[dict]]:
    """`count(ctx, args, proxy, mode)` for each mode and proxy, with the proxies stopped
    however it ends."""
    ctx = Ctx(args)
    ctx.check_server()
    ctx.ensure_database(args.scale)
    try:
        return ctx, [count(ctx, args, name, mode) for mode in args.modes for name in PROXIES]
    finally:
        ctx.pm.stop_all()


def save_counts(args, ctx, stem: str, title: str, headers: list[str], rows: list[list[str]],
                records: list[dict]) -> None:
    """Prints a counting tool's table and writes it as `<stem>_latest.md`, with the records
    and the machine in `<stem>_latest.json`."""
    print(render_table(headers, rows, markdown=False))
    ensure_results_dir(args.out)
    (args.out / f"{stem}_latest.md").write_text(
        f"# {title}, {now_iso()}\n\n" + render_table(headers, rows, markdown=True) + "\n")
    (args.out / f"{stem}_latest.json").write_text(json.dumps(
        {"finished": now_iso(), "machine": machine_info(), "versions": versions(ctx),
         "commit": git_commit(), "records": records}, indent=2) + "\n")


def parse_int_list(s: str) -> list[int]:
    try:
        vals = [int(x) for x in s.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {s!r}")
    if not vals or any(v <= 0 for v in vals):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {s!r}")
    return vals


def resolve_pgstepup(args) -> Optional[str]:
    """Return the pgstepup binary to use, or None when --no-pgstepup."""
    if args.no_pgstepup:
        return None
    cand, origin = args.pgstepup, "--pgstepup"
    if not cand and os.environ.get("PGSTEPUP_BIN"):
        cand, origin = os.environ["PGSTEPUP_BIN"], "$PGSTEPUP_BIN"
    if not cand:
        default = REPO_ROOT / "target" / "release" / "pgstepup"
        if default.exists():
            cand, origin = str(default), "default path"
        else:
            raise HarnessError(
                "no pgstepup binary found.\n"
                f"  Build it:   (cd {REPO_ROOT} && cargo build --release -p pgstepup)\n"
                "              -> target/release/pgstepup is then picked up automatically\n"
                "  or pass:    --pgstepup /path/to/pgstepup   (or set PGSTEPUP_BIN)\n"
                "  or run without it:  --no-pgstepup   (direct + pgbouncer only)")
    path = shutil.which(cand) or cand
    path = str(Path(path).resolve())
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        raise HarnessError(f"pgstepup binary from {origin} is not an executable file: {cand}")
    return path


def find_tool(name: str, explicit: Optional[str] = None, fallbacks: tuple[str, ...] = ()) -> str:
    for c in ([explicit] if explicit else []) + [shutil.which(name)] + list(fallbacks):
        if c and os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    raise HarnessError(f"{name} not found (looked in PATH and {', '.join(fallbacks) or '-'})")


# The password benchmark clients give. pgstepup verifies it with SCRAM against the verifier
# the harness writes (its `scram` auth mode, the one that lets it reuse upstream connections
# as pgbouncer's session pooling does); PostgreSQL (trust on loopback) and pgbouncer
# (auth_type = trust) never ask for it.
BENCH_PASSWORD = "pgstepup-bench"

# pgbouncer's default_pool_size here, and pgstepup's upstream.pool_size to match.
PGBOUNCER_POOL_SIZE = 40


def scram_verifier(password: str, iterations: int = 4096) -> str:
    """PostgreSQL's SCRAM-SHA-256 verifier for `password` (RFC 5802, as pg_authid stores it)."""
    salt = os.urandom(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    b64 = lambda b: base64.b64encode(b).decode()
    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


def client_env(sslmode: str) -> dict:
    """Environment for pgbench/psql: drop inherited libpq settings that could skew runs."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["PGSSLMODE"] = sslmode
    env["PGCONNECT_TIMEOUT"] = "10"
    env["PGAPPNAME"] = "pgstepup-bench"
    env["PGPASSWORD"] = BENCH_PASSWORD
    return env


# --------------------------------------------------------------------------
# process management
# --------------------------------------------------------------------------

try:
    _libc = ctypes.CDLL(None, use_errno=True)
except OSError:  # pragma: no cover
    _libc = None
PR_SET_PDEATHSIG = 1


def _child_setup() -> None:
    # Runs in the forked child (after any setuid done by Popen): if the harness
    # dies without cleaning up (e.g. SIGKILL), the kernel kills the proxy.
    if _libc is not None:
        _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


@dataclass
class Managed:
    name: str
    proc: subprocess.Popen
    logfile: Path

    def log_tail(self, n: int = 30) -> str:
        try:
            lines = self.logfile.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(lines[-n:]) or "(empty log)"


class ProcessManager:
    """Owns every long-lived process we start; stop_all() is idempotent."""

    def __init__(self) -> None:
        self.procs: list[Managed] = []
        self.tmpdirs: list[Path] = []
        self._lock = threading.Lock()
        atexit.register(self.stop_all)

    def mkdtemp(self, prefix: str, owner: Optional[str] = None) -> Path:
        d = Path(tempfile.mkdtemp(prefix=prefix))
        os.chmod(d, 0o755)
        if owner is not None:
            pw = pwd.getpwnam(owner)
            os.chown(d, pw.pw_uid, pw.pw_gid)
        self.tmpdirs.append(d)
        return d

    def start(self, name: str, cmd: list[str], logfile: Path, env=None,
              user: Optional[str] = None) -> Managed:
        kw = {}
        if user is not None:
            pw = pwd.getpwnam(user)
            kw = dict(user=pw.pw_uid, group=pw.pw_gid, extra_groups=[])
        out = open(logfile, "ab")
        try:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                    env=env, start_new_session=True,
                                    preexec_fn=_child_setup, cwd="/", **kw)
        finally:
            out.close()
        m = Managed(name, proc, logfile)
        with self._lock:
            self.procs.append(m)
        log(f"started {name} (pid {proc.pid}): {' '.join(cmd)}")
        return m

    def stop(self, m: Managed, grace: float = 5.0) -> None:
        p = m.proc
        if p.poll() is None:
            for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
                try:
                    # own session => pgid == pid; also reaches helpers it forked
                    os.killpg(p.pid, sig)
                except ProcessLookupError:
                    pass
                try:
                    p.wait(timeout=wait)
                    break
                except subprocess.TimeoutExpired:
                    log(f"{m.name} (pid {p.pid}) did not exit after {sig.name}")
            log(f"stopped {m.name} (pid {p.pid}, exit {p.returncode})")
        else:
            # reap the process group anyway in case the leader died but left children
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    def stop_all(self) -> None:
        # Called from finally/atexit in the main thread: a second Ctrl-C must
        # not interrupt the cleanup half-way.
        saved = {}
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                saved[s] = signal.signal(s, signal.SIG_IGN)
        for m in reversed(list(self.procs)):
            try:
                self.stop(m)
            except Exception as e:  # keep going: never leave others behind
                log(f"error stopping {m.name}: {e}")
            with self._lock:
                self.procs.remove(m)
        for d in list(self.tmpdirs):
            shutil.rmtree(d, ignore_errors=True)
            self.tmpdirs.remove(d)
        for s, h in saved.items():
            signal.signal(s, h)


def install_signal_handlers() -> None:
    def handler(signum, frame):
        # ignore repeats while we are cleaning up
        for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(s, signal.SIG_IGN)
        raise Interrupted(signal.Signals(signum).name)

    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, handler)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(host: str, port: int, m: Managed, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if m.proc.poll() is not None:
            raise HarnessError(f"{m.name} exited with code {m.proc.returncode} during startup; "
                               f"log tail:\n{m.log_tail()}")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise HarnessError(f"{m.name} did not accept connections on {host}:{port} within "
                       f"{timeout:.0f}s; log tail:\n{m.log_tail()}")


# --------------------------------------------------------------------------
# targets
# --------------------------------------------------------------------------

@dataclass
class Target:
    name: str
    host: str
    port: int
    managed: Optional[Managed] = None
    info: dict = field(default_factory=dict)

    @property
    def pid(self) -> Optional[int]:
        return self.managed.proc.pid if self.managed else None

    def check_alive(self) -> None:
        if self.managed and self.managed.proc.poll() is not None:
            raise HarnessError(f"{self.name} died (exit {self.managed.proc.returncode}); "
                               f"log tail:\n{self.managed.log_tail()}")


class Ctx:
    """Everything a benchmark script needs: tools, env, process manager."""

    def __init__(self, args) -> None:
        self.args = args
        self.pm = ProcessManager()
        self.env = client_env(args.sslmode)
        self.pgbench = find_tool("pgbench", None, ("/usr/bin/pgbench",))
        self.psql = find_tool("psql", None, ("/usr/bin/psql",))
        self.pgbouncer = find_tool("pgbouncer", args.pgbouncer_bin, ("/usr/sbin/pgbouncer",))
        self.pgstepup = resolve_pgstepup(args)
        self.user = args.pg_user
        if getattr(args, "client_socket", False) and not args.upstream_socket:
            raise HarnessError("--client-socket needs --upstream-socket DIR "
                               "(where direct runs find PostgreSQL's socket)")

    # ---- psql -------------------------------------------------------------
    def psql_cmd(self, host: str, port: int, db: str) -> list[str]:
        return [self.psql, "-X", "-v", "ON_ERROR_STOP=1", "-h", host, "-p", str(port),
                "-U", self.user, "-d", db]

    def sql(self, query: str, db: str = "postgres", host=None, port=None,
            timeout: float = 600) -> str:
        cmd = self.psql_cmd(host or self.args.pg_host, port or self.args.pg_port, db)
        cmd += ["-At", "-c", query]
        r = subprocess.run(cmd, capture_output=True, text=True, env=self.env, timeout=timeout)
        if r.returncode != 0:
            raise HarnessError(f"psql failed ({' '.join(cmd)}):\n{r.stderr.strip()}")
        return r.stdout.strip()

    # ---- database -----------------------------------------------------------
    def check_server(self) -> None:
        try:
            self.sql("select 1")
        except HarnessError as e:
            raise HarnessError(f"cannot reach PostgreSQL at {self.args.pg_host}:"
                               f"{self.args.pg_port} as {self.user}: {e}")

    def ensure_database(self, scale: Optional[int] = None) -> None:
        exists = self.sql(f"select 1 from pg_database where datname = '{BENCH_DB}'")
        if not exists:
            log(f"creating database {BENCH_DB}")
            self.sql(f'create database "{BENCH_DB}"')
        if scale is None:
            return
        cur = None
        try:
            have = self.sql("select to_regclass('pgbench_accounts') is not null and "
                            "to_regclass('pgbench_branches') is not null", db=BENCH_DB)
            if have == "t":
                b = int(self.sql("select count(*) from pgbench_branches", db=BENCH_DB))
                a = int(self.sql("select count(*) from pgbench_accounts", db=BENCH_DB))
                if a == b * 100000:
                    cur = b
        except HarnessError:
            cur = None
        if cur == scale:
            log(f"{BENCH_DB} already initialised at scale {scale}; skipping pgbench -i")
            return
        log(f"initialising {BENCH_DB} with pgbench -i -s {scale} (was: {cur})")
        cmd = [self.pgbench, "-i", "-q", "-s", str(scale), "-h", self.args.pg_host,
               "-p", str(self.args.pg_port), "-U", self.user, BENCH_DB]
        r = subprocess.run(cmd, capture_output=True, text=True, env=self.env)
        if r.returncode != 0:
            raise HarnessError(f"pgbench -i failed:\n{r.stderr[-2000:]}")

    # ---- targets --------------------------------------------------------------
    def direct_target(self) -> Target:
        if getattr(self.args, "client_socket", False):
            return Target("direct", self.args.upstream_socket, self.args.pg_port)
        return Target("direct", self.args.pg_host, self.args.pg_port)

    def _client_host(self, socket_dir: Path) -> str:
        """How pgbench reaches a proxy: its socket directory, or TCP on 127.0.0.1."""
        return str(socket_dir) if getattr(self.args, "client_socket", False) else "127.0.0.1"

    def _proxy_user(self) -> Optional[str]:
        if os.geteuid() != 0:
            return None
        if self.args.proxy_user:
            return self.args.proxy_user
        for u in ("postgres", "nobody"):
            try:
                pwd.getpwnam(u)
                return u
            except KeyError:
                pass
        raise HarnessError("running as root but neither 'postgres' nor 'nobody' exists; "
                           "pass --proxy-user")

    def start_pgbouncer(self, max_client_conn: int = 200,
                        default_pool_size: int = PGBOUNCER_POOL_SIZE,
                        wrap: tuple[str, ...] = ()) -> Target:
        """`wrap`: a command prefix (such as valgrind and its options)."""
        user = self._proxy_user()
        d = self.pm.mkdtemp("pgstepup-bench-pgbouncer-", owner=user)
        port = free_port()
        (d / "userlist.txt").write_text(f'"{self.user}" ""\n')
        ini = f"""\
[databases]
{BENCH_DB} = host={self.args.upstream_socket or self.args.pg_host} port={self.args.pg_port} dbname={BENCH_DB}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir = {d if getattr(self.args, "client_socket", False) else ""}
auth_type = trust
auth_file = {d}/userlist.txt
admin_users = {self.user}
pool_mode = session
{"server_lifetime = 0" if getattr(self.args, "pgbouncer_fresh_backends", False) else ""}
max_client_conn = {max_client_conn}
default_pool_size = {default_pool_size}
server_tls_sslmode = {self.args.sslmode}
client_tls_sslmode = disable
ignore_startup_parameters = extra_float_digits
logfile = {d}/pgbouncer.log
pidfile =
syslog = 0
verbose = 0
log_connections = 0
log_disconnections = 0
log_pooler_errors = 1
log_stats = 0
"""
        (d / "pgbouncer.ini").write_text(ini)
        for f in d.iterdir():
            os.chmod(f, 0o644)
        m = self.pm.start("pgbouncer",
                          list(wrap) + [self.pgbouncer, "-q", str(d / "pgbouncer.ini")],
                          d / "stderr.log", env={"PATH": "/usr/bin:/bin"}, user=user)
        t = Target("pgbouncer", self._client_host(d), port, m, {"run_as": user or "(self)",
                                                        "max_client_conn": max_client_conn,
                                                        "fresh_backends": getattr(
                                                            self.args,
                                                            "pgbouncer_fresh_backends", False),
                                                        "default_pool_size": default_pool_size})
        wait_port("127.0.0.1", port, m, timeout=120 if wrap else 30)
        self.verify_target(t)
        return t

    def start_pgstepup(self, wrap: tuple[str, ...] = (), scram: bool = True) -> Optional[Target]:
        """`wrap`: a command prefix (such as valgrind and its options). `scram=False`: the
        upstream's own authentication relayed (passthrough), for clients that speak no SCRAM;
        upstream connections are then never reused."""
        if not self.pgstepup:
            return None
        d = self.pm.mkdtemp("pgstepup-bench-pgstepup-")
        port = free_port()
        if self.args.pgstepup_upstream:
            upstream = self.args.pgstepup_upstream
        elif self.args.upstream_socket:
            # libpq ignores sslmode on a socket; pgstepup refuses one that requires TLS there.
            upstream = (f"postgres:///?host={self.args.upstream_socket}"
                        f"&port={self.args.pg_port}")
        else:
            upstream = f"postgres://127.0.0.1:5432?sslmode={self.args.sslmode}"
        # What a DBA would write for these tables: the benchmark's own tables may be written
        # (COPY in) without step-up; everything else keeps the built-in policy.
        (d / "policy.toml").write_text(
            '[[rule]]\nname = "bench-tables-writable"\n'
            'tables = ["copy_bench_t", "pgbench_*"]\n'
            'kinds = ["write", "ddl"]\naction = "allow"\n')
        proxy = (f'[proxy]\nunix_socket_dir = "{d}"\n'
                 if getattr(self.args, "client_socket", False) else "")
        # SCRAM against a verifier file (pgbouncer's auth_file format), so pgstepup keeps
        # upstream connections for the next client as pgbouncer does; as many as pgbouncer's
        # pool holds, none with --pgbouncer-fresh-backends.
        (d / "userlist.txt").write_text(f'"{self.user}" "{scram_verifier(BENCH_PASSWORD)}"\n')
        fresh = getattr(self.args, "pgbouncer_fresh_backends", False)
        pool_size = 0 if fresh else PGBOUNCER_POOL_SIZE
        auth = f'[auth]\nfile = "{d / "userlist.txt"}"\n' if scram else ""
        (d / "pgstepup.toml").write_text(
            f'{proxy}[policy]\nfile = "{d / "policy.toml"}"\n{auth}'
            f'[upstream]\npool_size = {pool_size}\n')
        cmd = list(wrap) + [self.pgstepup, "serve", "--config", str(d / "pgstepup.toml"),
               "--listen", f"127.0.0.1:{port}", "--upstream", upstream,
               "--web-listen", "127.0.0.1:0", "--admin-socket", str(d / "admin.sock"),
               ] + list(self.args.pgstepup_arg)
        env = dict(os.environ)
        # The default log level (info), as deployed: the relay's cost must not depend on it.
        env.pop("RUST_LOG", None)
        m = self.pm.start("pgstepup", cmd, d / "pgstepup.log", env=env)
        t = Target("pgstepup", self._client_host(d), port, m, {"binary": self.pgstepup,
                                                       "command": cmd,
                                                       "auth": ("scram (verifier file)" if scram
                                                                else "passthrough"),
                                                       "upstream_pool_size": pool_size})
        wait_port("127.0.0.1", port, m, timeout=120 if wrap else 30)
        self.verify_target(t)
        return t

    def verify_target(self, t: Target) -> None:
        """A real query through the target; also records whether the
        target->PostgreSQL connection uses TLS and whether it is a Unix socket
        (fairness checks)."""
        deadline = time.monotonic() + 15
        last = None
        while time.monotonic() < deadline:
            t.check_alive()
            try:
                out = self.sql("select coalesce((select ssl from pg_stat_ssl "
                               "where pid = pg_backend_pid()), false) "
                               "|| '|' || (inet_server_addr() is null)",
                               db=BENCH_DB, host=t.host, port=t.port, timeout=15)
                tls, unix = out.split("|")
                t.info["upstream_tls"] = (tls == "true")
                t.info["upstream_unix_socket"] = (unix == "true")
                if (t.managed and bool(self.args.upstream_socket)
                        != t.info["upstream_unix_socket"]):
                    raise HarnessError(f"{t.name} does not reach PostgreSQL the way "
                                       "--upstream-socket asks")
                return
            except (HarnessError, subprocess.TimeoutExpired) as e:
                last = e
                time.sleep(0.3)
        raise HarnessError(f"query through {t.name} at {t.host}:{t.port} failed: {last}"
                           + (f"\nlog tail:\n{t.managed.log_tail()}" if t.managed else ""))

    def start_targets(self) -> list[Target]:
        targets = [self.direct_target()]
        self.verify_target(targets[0])
        targets.append(self.start_pgbouncer())
        ps = self.start_pgstepup()
        if ps:
            targets.append(ps)
        tls = {t.name: t.info.get("upstream_tls") for t in targets}
        if len(set(tls.values())) > 1:
            log(f"WARNING: TLS to PostgreSQL differs between targets {tls}; "
                "results are not like-for-like")
        return targets


# --------------------------------------------------------------------------
# /proc accounting
# --------------------------------------------------------------------------

def _stat_fields(pid: int) -> Optional[list[str]]:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read().decode("ascii", "replace")
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # fields after "(comm)"; index 0 is field 3 (state)
    return data[data.rfind(")") + 2:].split()


def proc_cpu_ticks(pid: int) -> Optional[int]:
    """utime+stime (fields 14, 15) of a process; covers all its threads."""
    f = _stat_fields(pid)
    if f is None:
        return None
    return int(f[11]) + int(f[12])


def proc_user_ticks(pid: int) -> Optional[int]:
    """utime alone (field 14): the process's own code, without the kernel's socket work."""
    f = _stat_fields(pid)
    if f is None:
        return None
    return int(f[11])


def proc_tree_pids(pid: int) -> list[int]:
    """pid and all its descendants (from the ppid field of /proc/*/stat)."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            f = _stat_fields(int(name))
            if f is not None and len(f) > 1:
                children.setdefault(int(f[1]), []).append(int(name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def proc_rss_kb(pid: int) -> tuple[Optional[int], Optional[int]]:
    """(VmRSS, VmHWM) in kB."""
    rss = hwm = None
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1])
                elif line.startswith("VmHWM:"):
                    hwm = int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return rss, hwm


class PgCpu:
    """CPU ticks consumed by the whole PostgreSQL server: postmaster (incl.
    reaped children via cutime/cstime) + live children.  A backend that exits
    between two snapshots moves from 'live' to the postmaster's cutime, so
    deltas stay consistent."""

    def __init__(self, ctx: Ctx) -> None:
        self.postmaster = None
        try:
            pid = ctx.sql("select pid from pg_stat_activity "
                          "where backend_type = 'checkpointer' limit 1")
            f = _stat_fields(int(pid))
            if f is not None:
                self.postmaster = int(f[1])  # ppid
                if _stat_fields(self.postmaster) is None:
                    self.postmaster = None
        except (HarnessError, ValueError):
            self.postmaster = None
        if self.postmaster is None:
            log("note: PostgreSQL server is not local/visible; server CPU not measured")

    def ticks(self) -> Optional[int]:
        if self.postmaster is None:
            return None
        pm = _stat_fields(self.postmaster)
        if pm is None:
            return None
        total = sum(int(x) for x in pm[11:15])  # utime stime cutime cstime
        ppid_s = str(self.postmaster)
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            f = _stat_fields(int(name))
            if f is not None and len(f) > 12 and f[1] == ppid_s:
                total += int(f[11]) + int(f[12])
        return total


class RssSampler:
    """Samples VmRSS of a pid every `interval` seconds in a thread; .peak_kb."""

    def __init__(self, pid: Optional[int], interval: float = 0.05) -> None:
        self.pid, self.interval = pid, interval
        self.peak_kb: Optional[int] = None
        self.samples = 0
        self._stop = threading.Event()
        self._thr = None

    def _run(self) -> None:
        while True:
            rss, _ = proc_rss_kb(self.pid)
            if rss is not None:
                self.samples += 1
                self.peak_kb = rss if self.peak_kb is None else max(self.peak_kb, rss)
            if self._stop.wait(self.interval):
                break

    def __enter__(self):
        if self.pid is not None:
            self._thr = threading.Thread(target=self._run, daemon=True)
            self._thr.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self._thr:
            self._thr.join()
        return False


# --------------------------------------------------------------------------
# metadata
# --------------------------------------------------------------------------

def _cmd_out(cmd: list[str], cwd=None) -> Optional[str]:
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=20, cwd=cwd)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return r.stdout.strip() if r.returncode == 0 else None


def git_commit() -> str:
    head = _cmd_out(["git", "-C", str(REPO_ROOT), "rev-parse", "--short=12", "HEAD"])
    if head is None:
        return "unknown (no commits yet / not a git checkout)"
    dirty = _cmd_out(["git", "-C", str(REPO_ROOT), "status", "--porcelain",
                      "--untracked-files=no"])
    return head + ("-dirty" if dirty else "")


def machine_info() -> dict:
    cpu = "unknown"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = None
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal:"):
                mem = f"{int(line.split()[1]) / 1048576:.1f} GiB"
    except OSError:
        pass
    return {"nproc": os.cpu_count(), "cpu_model": cpu, "memory": mem,
            "kernel": os.uname().release, "hostname": socket.gethostname()}


def versions(ctx: Ctx) -> dict:
    v = {}
    try:
        v["postgresql"] = ctx.sql("select version()")
    except HarnessError:
        v["postgresql"] = "unknown"
    v["pgbench"] = _cmd_out([ctx.pgbench, "--version"]) or "unknown"
    pgb = _cmd_out([ctx.pgbouncer, "--version"])
    v["pgbouncer"] = pgb.splitlines()[0] if pgb else "unknown"
    v["pgstepup_git_commit"] = git_commit()
    if ctx.pgstepup:
        out = _cmd_out([ctx.pgstepup, "--version"])
        v["pgstepup_binary"] = ctx.pgstepup
        v["pgstepup_version"] = out.splitlines()[0] if out else "unknown"
    v["python"] = sys.version.split()[0]
    return v


def loadavg() -> Optional[float]:
    try:
        return float(open("/proc/loadavg").read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def now_iso() -> str:
    return _dt.datetime.now().astimezone().isoformat(timespec="seconds")


def ensure_results_dir(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    gi = out / ".gitignore"
    try:
        inside_repo = out.resolve().is_relative_to(REPO_ROOT)
    except (OSError, ValueError):
        inside_repo = False
    if inside_repo and not gi.exists():
        gi.write_text("# benchmark output: never committed\n*\n!.gitignore\n")


def fmt_num(v, spec: str = ",.0f", na: str = "n/a") -> str:
    return na if v is None else format(v, spec)


def render_table(headers: list[str], rows: list[list[str]], markdown: bool,
                 align_left: int = 1) -> str:
    if markdown:
        out = ["| " + " | ".join(headers) + " |",
               "|" + "|".join(":---" if i < align_left else "---:"
                              for i in range(len(headers))) + "|"]
        out += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(out)
    w = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
         for i, h in enumerate(headers)]

    def line(cells):
        return "  ".join(c.ljust(w[i]) if i < align_left else c.rjust(w[i])
                         for i, c in enumerate(cells))
    return "\n".join([line(headers), "  ".join("-" * x for x in w)] + [line(r) for r in rows])


def require_runs(runs: list, interrupted: Optional[str], what: str = "runs") -> None:
    """After the measuring loop: partial results are fine, none at all is an error (or the
    interruption that stopped it)."""
    if not runs:
        if interrupted:
            raise Interrupted(interrupted)
        raise HarnessError(f"no {what} completed")


def run_main(main) -> None:
    """Wrap a script's main(): signal handling, clean error messages, exit codes."""
    install_signal_handlers()
    try:
        rc = main()
    except HarnessError as e:
        print(f"error: {e}", file=sys.stderr)
        rc = 2
    except Interrupted as e:
        print(f"\ninterrupted ({e}); cleaned up", file=sys.stderr)
        rc = 130
    except KeyboardInterrupt:
        print("\ninterrupted; cleaned up", file=sys.stderr)
        rc = 130
    sys.exit(rc or 0)
