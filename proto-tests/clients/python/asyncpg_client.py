#!/usr/bin/env python3
"""Real-client protocol checks with asyncpg, under the built-in default policy.

Connection comes only from the libpq environment (PGHOST, PGPORT, PGUSER, PGPASSWORD,
PGDATABASE, PGSSLMODE, PGSSLROOTCERT). It runs against pgstepup only (one check expects a
refusal), and reads only: the proxy refuses at once whatever needs step-up, so a read it
misjudged fails a check instead of hanging. Prints one
line per check: "ok <name>" or "FAIL <name>: <details>". Exits 0 only when every check passed.
"""
import asyncio
import os
import ssl
import sys
import time

try:
    import asyncpg
except ImportError as e:
    print(f"FAIL setup: {e} (pip install asyncpg)", flush=True)
    sys.exit(1)

GLOBAL_TIMEOUT_S = 55
failed = False


def ok(name):
    print(f"ok {name}", flush=True)


def fail(name, details):
    global failed
    failed = True
    details = " ".join(str(details).split())[:600]
    print(f"FAIL {name}: {details}", flush=True)


def expect(what, expected, actual):
    if expected != actual:
        raise AssertionError(f"{what}: expected {expected!r} got {actual!r}")


def connect_args():
    """asyncpg's arguments from the libpq environment (verify-full checks the CA and host)."""
    args = dict(
        host=os.environ.get("PGHOST", "127.0.0.1"),
        port=int(os.environ.get("PGPORT", "5432")),
        user=os.environ.get("PGUSER"),
        password=os.environ.get("PGPASSWORD"),
        database=os.environ.get("PGDATABASE"),
        timeout=10,
    )
    mode = os.environ.get("PGSSLMODE", "disable")
    if mode == "verify-full":
        args["ssl"] = ssl.create_default_context(cafile=os.environ["PGSSLROOTCERT"])
    elif mode == "require":
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        args["ssl"] = context
    else:
        args["ssl"] = False
    return args


async def check(name, body):
    try:
        await asyncio.wait_for(body(), timeout=20)
        ok(name)
    except Exception as e:  # every failure is reported, none stops the others
        fail(name, f"{type(e).__name__}: {e}")


async def main():
    started = time.monotonic()
    try:
        conn = await asyncpg.connect(**connect_args())
        ok("connect")
    except Exception as e:
        fail("connect", f"{type(e).__name__}: {e}")
        return

    async def parameters_and_types():
        row = await conn.fetchrow(
            "SELECT $1::int + 1 AS n, $2::text AS t, $3::numeric * 2 AS d, "
            "'{\"a\": [1, 2]}'::jsonb AS j, ARRAY[1, NULL, 3] AS a",
            41, "héllo", 1.25,
        )
        expect("n", 42, row["n"])
        expect("t", "héllo", row["t"])
        expect("d", "2.50", str(row["d"]))
        expect("j", '{"a": [1, 2]}', row["j"])
        expect("a", [1, None, 3], row["a"])

    async def introspected_types():
        # Types asyncpg has no built-in codec for make it run its introspection query first.
        bounds = await conn.fetchval("SELECT int4range(1, 5)")
        expect("range", (1, 5), (bounds.lower, bounds.upper))
        expect("point", (1.0, 2.0), tuple(await conn.fetchval("SELECT '(1,2)'::point")))
        expect("name array", ["r", "v"], await conn.fetchval(
            "SELECT ARRAY['r', 'v']::name[]"))

    async def prepared_statement_reuse():
        statement = await conn.prepare(
            "SELECT count(*) FROM generate_series(1, $1::int) AS g WHERE g % 2 = 0")
        expect("first", 5, await statement.fetchval(10))
        expect("second", 50, await statement.fetchval(100))
        expect("columns", ["count"], [a.name for a in statement.get_attributes()])

    async def transaction_and_cursor():
        async with conn.transaction(readonly=True):
            seen = [r["g"] async for r in conn.cursor(
                "SELECT g FROM generate_series(1, 250) AS g", prefetch=40)]
        expect("rows", list(range(1, 251)), seen)
        expect("in a transaction after it", False, conn.is_in_transaction())

    async def copy_out_of_a_query():
        lines = []

        async def sink(chunk):
            lines.extend(bytes(chunk).decode().splitlines())

        await conn.copy_from_query(
            "SELECT g, g * g FROM generate_series(1, 3) AS g", output=sink, format="csv")
        expect("copy", ["1,1", "2,4", "3,9"], lines)

    async def refusal_is_immediate_and_the_session_goes_on():
        try:
            await conn.execute("CREATE TEMP TABLE asyncpg_refused (a int)")
            raise AssertionError("a DDL statement ran without step-up")
        except asyncpg.exceptions.InsufficientPrivilegeError as e:
            expect("names pgstepup", True, "pgstepup" in str(e))
        expect("after", 7, await conn.fetchval("SELECT 7"))

    async def timeout_cancels_through_the_proxy():
        began = time.monotonic()
        try:
            await conn.fetchval("SELECT pg_sleep(20)", timeout=0.5)
            raise AssertionError("the sleep was not cancelled")
        except asyncio.TimeoutError:
            pass
        expect("cancelled well before 20 s", True, time.monotonic() - began < 10)
        expect("after", 8, await conn.fetchval("SELECT 8"))

    async def pool_release_resets_and_reuses_the_connection():
        # On release the pool sends its reset query (pg_advisory_unlock_all, CLOSE ALL,
        # UNLISTEN *, RESET ALL); if pgstepup held or refused it, the pool would drop the
        # connection (another backend) or wait, and the setting would survive.
        pool = await asyncpg.create_pool(min_size=1, max_size=1, **connect_args())
        try:
            async with pool.acquire() as first:
                pid = await first.fetchval("SELECT pg_backend_pid()")
                await first.execute("SET work_mem = '7MB'")
            async with pool.acquire() as second:
                expect("same backend", pid, await second.fetchval("SELECT pg_backend_pid()"))
                expect("reset", False, await second.fetchval("SHOW work_mem") == "7MB")
        finally:
            await pool.close()

    await check("parameters_and_types", parameters_and_types)
    await check("introspected_types", introspected_types)
    await check("prepared_statement_reuse", prepared_statement_reuse)
    await check("transaction_and_cursor", transaction_and_cursor)
    await check("copy_out_of_a_query", copy_out_of_a_query)
    await check("refusal_is_immediate_and_the_session_goes_on",
                refusal_is_immediate_and_the_session_goes_on)
    await check("timeout_cancels_through_the_proxy", timeout_cancels_through_the_proxy)
    await check("pool_release_resets_and_reuses_the_connection",
                pool_release_resets_and_reuses_the_connection)
    await conn.close()
    print(f"# asyncpg {asyncpg.__version__}, {time.monotonic() - started:.1f} s", flush=True)


if __name__ == "__main__":
    try:
        asyncio.run(asyncio.wait_for(main(), timeout=GLOBAL_TIMEOUT_S))
    except asyncio.TimeoutError:
        fail("watchdog", f"not done within {GLOBAL_TIMEOUT_S} s")
    sys.exit(1 if failed else 0)
