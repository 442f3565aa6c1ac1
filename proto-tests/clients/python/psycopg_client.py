#!/usr/bin/env python3
"""Real-client protocol checks with psycopg 3.

Connection comes only from the libpq environment (PGHOST, PGPORT, PGUSER,
PGPASSWORD, PGDATABASE, PGSSLMODE, PGSSLROOTCERT): libpq reads them itself.
Prints one line per check: "ok <name>" or "FAIL <name>: <details>".
Exits 0 only when every check passed.
"""
import datetime
import decimal
import getpass
import hashlib
import os
import random
import string
import sys
import threading
import time
import traceback

try:
    import psycopg
    from psycopg import errors
    from psycopg.types.json import Jsonb
except ImportError as e:
    print(f"FAIL setup: {e} (pip install 'psycopg[binary]')", flush=True)
    sys.exit(1)

GLOBAL_TIMEOUT_S = 55
SUFFIX = "".join(random.choices(string.ascii_lowercase + string.digits, k=10))
T = f"python_{SUFFIX}"
TABLES = [f"{T}_tx", f"{T}_copy", f"{T}_types", f"{T}_latin1"]
failed = False


# ---------------------------------------------------------------- helpers

def ok(name):
    print(f"ok {name}", flush=True)


def fail(name, details):
    global failed
    failed = True
    details = " ".join(str(details).split())[:600]
    print(f"FAIL {name}: {details}", flush=True)


class CheckFailed(Exception):
    pass


def expect(what, expected, actual):
    if expected != actual:
        raise CheckFailed(f"{what}: expected {expected!r} got {actual!r}")


def connect(**kwargs):
    """Connect using only the libpq environment variables (plus kwargs)."""
    return psycopg.connect("", connect_timeout=10, **kwargs)


def watchdog():
    print(f"FAIL watchdog: script still running after {GLOBAL_TIMEOUT_S} s", flush=True)
    os._exit(1)


# ---------------------------------------------------------------- checks

def check_connect():
    user = os.environ.get("PGUSER") or getpass.getuser()
    with connect(autocommit=True) as conn:
        row = conn.execute("select current_user, current_database()").fetchone()
        expect("user/database", (user, os.environ.get("PGDATABASE") or user), row)
        want_tls = os.environ.get("PGSSLMODE", "disable") != "disable"
        expect("client-side TLS in use", want_tls, conn.pgconn.ssl_in_use)


def check_simple_query_multi_statement():
    with connect(autocommit=True) as conn:
        cur = conn.cursor()
        # No parameters: psycopg sends a simple Query message.
        cur.execute("select 1 as a; select 'two' as b, 2")
        expect("first result", [(1,)], cur.fetchall())
        expect("has second result", True, cur.nextset())
        expect("second result", [("two", 2)], cur.fetchall())
        expect("no third result", None, cur.nextset())


def check_extended_params():
    with connect(autocommit=True) as conn:
        row = conn.execute(
            "select %s::int + 1, upper(%s), pg_typeof(%s)::text, %s::text is null",
            (41, "abc é", 70000, None),
        ).fetchone()
        expect("row", (42, "ABC É", "integer", True), row)


def check_prepared_reuse():
    with connect(autocommit=True) as conn:
        cur = conn.cursor()
        for i in range(1, 11):
            cur.execute("select %s::int * 2, md5(%s::text)", (i, str(i)), prepare=True)
            expect(f"iteration {i}", (i * 2, hashlib.md5(str(i).encode()).hexdigest()), cur.fetchone())
        n = conn.execute(
            "select count(*) from pg_prepared_statements where not from_sql and statement like 'select $1::int * 2%%'"
        ).fetchone()[0]
        expect("server-side prepared statements", 1, n)


def check_transactions():
    t = f"{T}_tx"
    with connect() as conn:
        conn.execute(f"create table {t} (id int primary key, v text)")
        conn.commit()
        conn.execute(f"insert into {t} values (%s, %s)", (1, "rolled back"))
        conn.rollback()
        expect("after rollback", 0, conn.execute(f"select count(*) from {t}").fetchone()[0])
        conn.rollback()
        conn.execute(f"insert into {t} values (%s, %s)", (2, "committed"))
        conn.commit()
        # Savepoints through nested transaction blocks.
        with conn.transaction():
            conn.execute(f"insert into {t} values (3, 'kept')")
            with conn.transaction():
                conn.execute(f"insert into {t} values (4, 'undone')")
                raise psycopg.Rollback()
            conn.execute(f"insert into {t} values (5, 'after savepoint')")
            try:
                with conn.transaction():
                    conn.execute(f"insert into {t} values (2, 'duplicate')")
            except errors.UniqueViolation:
                pass
            conn.execute(f"insert into {t} values (6, 'after failed savepoint')")
        rows = conn.execute(f"select id, v from {t} order by id").fetchall()
        conn.commit()
        expect(
            "rows",
            [(2, "committed"), (3, "kept"), (5, "after savepoint"), (6, "after failed savepoint")],
            rows,
        )
    # Check from a fresh connection that the commit really happened.
    with connect() as conn2:
        ids = [r[0] for r in conn2.execute(f"select id from {t} order by id")]
        expect("committed rows seen by another connection", [2, 3, 5, 6], ids)


def check_copy_in_out():
    t = f"{T}_copy"
    n = 50_000
    h_in = hashlib.sha256()
    with connect(autocommit=True) as conn:
        conn.execute(f"create table {t} (id int primary key, v text, x double precision)")
        cur = conn.cursor()
        with cur.copy(f"COPY {t} (id, v, x) FROM STDIN") as copy:
            for i in range(1, n + 1):
                v = None if i % 11 == 0 else f"row {i}\twith tab é✓ \\ {i * 7}"
                copy.write_row((i, v, i / 4))
                h_in.update(f"{i}|{v}|{i / 4}\n".encode())
        count, s = conn.execute(f"select count(*), sum(id) from {t}").fetchone()
        expect("server count/sum", (n, n * (n + 1) // 2), (count, s))

        h_out = hashlib.sha256()
        got = 0
        with cur.copy(f"COPY (select id, v, x from {t} order by id) TO STDOUT") as copy:
            copy.set_types(["int4", "text", "float8"])
            for row in copy.rows():
                got += 1
                h_out.update(f"{row[0]}|{row[1]}|{row[2]}\n".encode())
        expect("rows copied out", n, got)
        expect("checksum", h_in.hexdigest(), h_out.hexdigest())

        # Raw text-format COPY TO STDOUT as well (byte-level check of a few rows).
        raw = b""
        with cur.copy(f"COPY (select id, v from {t} where id in (1, 11) order by id) TO STDOUT") as copy:
            for chunk in copy:
                raw += bytes(chunk)
        expect("raw copy bytes", "1\trow 1\\twith tab é✓ \\\\ 7\n11\t\\N\n".encode(), raw)


def check_listen_notify():
    chan = f"{T}_chan"
    payload = f"payload é ✓ {SUFFIX}"
    with connect(autocommit=True) as listener, connect(autocommit=True) as notifier:
        listener.execute(f"LISTEN {chan}")

        def notify():
            time.sleep(0.5)  # listener is idle inside notifies() by then
            notifier.execute("select pg_notify(%s, %s)", (chan, payload))

        th = threading.Thread(target=notify, daemon=True)
        th.start()
        got = list(listener.notifies(timeout=10, stop_after=1))
        th.join(5)
        expect("notifications", [(chan, payload)], [(n.channel, n.payload) for n in got])
        # pg_backend_pid() rather than BackendKeyData: a proxy may hand out its own keys
        expect("sender pid", notifier.execute("select pg_backend_pid()").fetchone()[0], got[0].pid)


def check_cancel():
    with connect(autocommit=True) as conn:
        def cancel():
            time.sleep(0.5)
            conn.cancel_safe(timeout=10)

        th = threading.Thread(target=cancel, daemon=True)
        th.start()
        t0 = time.monotonic()
        try:
            conn.execute("select pg_sleep(30)")
            raise CheckFailed("pg_sleep(30) was not cancelled")
        except errors.QueryCanceled as e:
            expect("sqlstate", "57014", e.sqlstate)
        elapsed = time.monotonic() - t0
        th.join(5)
        if elapsed > 5:
            raise CheckFailed(f"cancel took {elapsed:.1f} s")
        expect("connection usable after cancel", 3, conn.execute("select 3").fetchone()[0])


def check_error_recovery():
    with connect(autocommit=True) as conn:
        # simple protocol
        try:
            conn.execute("select 1/0")
            raise CheckFailed("no error")
        except errors.DivisionByZero as e:
            expect("simple sqlstate", "22012", e.sqlstate)
        expect("simple follow-up", 2, conn.execute("select 2").fetchone()[0])
        # extended protocol (parameters)
        try:
            conn.execute("select %s::int / %s::int", (1, 0))
            raise CheckFailed("no error")
        except errors.DivisionByZero as e:
            expect("extended sqlstate", "22012", e.sqlstate)
        expect("extended follow-up", 4, conn.execute("select %s::int / %s::int", (8, 2)).fetchone()[0])
        # prepared statement error then reuse
        for args, want in (((1, 0), None), ((9, 3), 3), ((1, 0), None), ((10, 5), 2)):
            try:
                got = conn.execute("select %s::int / %s::int", args, prepare=True).fetchone()[0]
                expect(f"prepared {args}", want, got)
            except errors.DivisionByZero as e:
                expect(f"prepared {args} error", None, want)
                expect("prepared sqlstate", "22012", e.sqlstate)
    # inside a transaction: the error aborts it until rollback
    with connect() as conn:
        try:
            conn.execute("select 1/0")
        except errors.DivisionByZero:
            pass
        try:
            conn.execute("select 1")
            raise CheckFailed("aborted transaction accepted a query")
        except errors.InFailedSqlTransaction as e:
            expect("in failed tx sqlstate", "25P02", e.sqlstate)
        conn.rollback()
        expect("after rollback", 5, conn.execute("select 5").fetchone()[0])


def check_big_result():
    n = 100_000
    with connect(autocommit=True) as conn:
        cur = conn.cursor()
        cur.execute("select g, md5(g::text) from generate_series(1, %s) g", (n,))
        count = total = bad = 0
        for g, m in cur:
            count += 1
            total += g
            if m != hashlib.md5(str(g).encode()).hexdigest():
                bad += 1
        expect("count/sum/bad md5", (n, n * (n + 1) // 2, 0), (count, total, bad))
        # Same again through a server-side cursor (portal fetched in batches).
    with connect() as conn:
        with conn.cursor(name="big_cursor") as cur:
            cur.itersize = 7000
            cur.execute("select g from generate_series(1, %s) g", (n,))
            count = total = 0
            for (g,) in cur:
                count += 1
                total += g
        conn.commit()
        expect("server-side cursor count/sum", (n, n * (n + 1) // 2), (count, total))


def check_types_round_trip():
    text = "héllo wörld ✓ 日本語 🎉"
    blob = bytes(range(256))
    ts = datetime.datetime(2024, 3, 15, 12, 34, 56, 789123,
                           tzinfo=datetime.timezone(datetime.timedelta(hours=5, minutes=30)))
    num = decimal.Decimal("12345678901234567890.123456789012345")
    ints = [1, 2, 3, -2147483648]
    texts = ["a b", "c", None, 'é"q\\', ""]
    doc = {"outer": {"list": [1, 2.5, {"deep": None}], "s": "é✓"}, "b": True, "n": "12"}
    params = (text, blob, ts, num, ints, texts, Jsonb(doc))
    sql = "select %s::text, %s::bytea, %s::timestamptz, %s::numeric, %s::int[], %s::text[], %s::jsonb"
    with connect(autocommit=True) as conn:
        conn.execute("set timezone = 'Asia/Tokyo'")
        for binary in (False, True):
            row = conn.cursor(binary=binary).execute(sql, params).fetchone()
            fmt = "binary" if binary else "text"
            expect(f"{fmt} text", text, row[0])
            expect(f"{fmt} bytea", blob, bytes(row[1]))
            expect(f"{fmt} timestamptz", ts, row[2])
            expect(f"{fmt} timestamptz utcoffset", datetime.timedelta(hours=9), row[2].utcoffset())
            expect(f"{fmt} numeric", num, row[3])
            expect(f"{fmt} int[]", ints, row[4])
            expect(f"{fmt} text[]", texts, row[5])
            expect(f"{fmt} jsonb", doc, row[6])
        # Stored in a table and checked server-side too.
        t = f"{T}_types"
        conn.execute(f"create table {t} (t text, b bytea, ts timestamptz, n numeric, ia int[], ta text[], j jsonb)")
        conn.execute(f"insert into {t} values (%s, %s, %s, %s, %s, %s, %s)", params)
        row = conn.execute(
            f"""select length(t), octet_length(t), length(b), md5(b), ts = '2024-03-15 07:04:56.789123Z',
                       n::text, ia[4], ta[4], j->'outer'->'list'->>1 from {t}"""
        ).fetchone()
        expect("server-side view", (19, 32, 256, hashlib.md5(blob).hexdigest(), True,
                                    "12345678901234567890.123456789012345", -2147483648, 'é"q\\', "2.5"), row)


def check_latin1_client_encoding():
    t = f"{T}_latin1"
    with connect(autocommit=True, client_encoding="latin1") as conn:
        expect("python codec", "iso8859-1", conn.info.encoding)
        expect("server setting", "LATIN1", conn.execute("show client_encoding").fetchone()[0])
        row = conn.execute(
            "select ascii(%s), octet_length(convert_to(%s, 'UTF8')), %s || 'x'", ("é", "é", "naïve")
        ).fetchone()
        expect("é in latin1 session", (233, 2, "naïvex"), row)
        # Simple-protocol literal: the query bytes themselves are LATIN1.
        expect("literal", (233, "été"), conn.execute("select ascii('é'), 'été'").fetchone())
        conn.execute(f"create table {t} (v text)")
        conn.execute(f"insert into {t} values (%s)", ("été naïve",))
        try:
            conn.execute("select %s", ("日本語",))
            raise CheckFailed("non-LATIN1 character accepted")
        except UnicodeEncodeError:
            pass  # psycopg cannot encode it for a LATIN1 connection: expected
    with connect(autocommit=True) as conn:
        row = conn.execute(f"select v, length(v), octet_length(v) from {t}").fetchone()
        expect("read back in UTF8", ("été naïve", 9, 12), row)


# ---------------------------------------------------------------- main

def cleanup():
    try:
        with connect(autocommit=True) as conn:
            conn.execute(f"drop table if exists {', '.join(TABLES)}")
    except Exception as e:  # noqa: BLE001
        print(f"# cleanup failed: {e}", file=sys.stderr)


CHECKS = [
    ("simple_query_multi_statement", check_simple_query_multi_statement),
    ("extended_params", check_extended_params),
    ("prepared_reuse", check_prepared_reuse),
    ("transactions", check_transactions),
    ("copy_in_out", check_copy_in_out),
    ("listen_notify", check_listen_notify),
    ("cancel", check_cancel),
    ("error_recovery", check_error_recovery),
    ("big_result", check_big_result),
    ("types_round_trip", check_types_round_trip),
    ("latin1_client_encoding", check_latin1_client_encoding),
]


def run_check(name, fn):
    try:
        fn()
        ok(name)
        return True
    except CheckFailed as e:
        fail(name, e)
    except Exception as e:  # noqa: BLE001
        here = [f for f in traceback.extract_tb(e.__traceback__) if f.filename == __file__]
        where = f" (line {here[-1].lineno})" if here else ""
        fail(name, f"{type(e).__name__}: {e}{where}")
    return False


def main():
    start = time.monotonic()
    timer = threading.Timer(GLOBAL_TIMEOUT_S, watchdog)
    timer.daemon = True
    timer.start()
    connected = run_check("connect", check_connect)
    try:
        for name, fn in CHECKS:
            if connected:
                run_check(name, fn)
            else:
                fail(name, "skipped: cannot connect")
    finally:
        if connected:
            cleanup()
    print(f"# python client: {time.monotonic() - start:.1f} s", flush=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
