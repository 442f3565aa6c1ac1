#!/usr/bin/env bash
# Real-client protocol checks driving psql.
#
# Connection comes only from the libpq environment (PGHOST, PGPORT, PGUSER,
# PGPASSWORD, PGDATABASE, PGSSLMODE, PGSSLROOTCERT), which psql reads itself.
# Prints one line per check: "ok <name>" or "FAIL <name>: <details>".
# Exits 0 only when every check passed.
set -u

export PGCONNECT_TIMEOUT="${PGCONNECT_TIMEOUT:-10}"
export PGCLIENTENCODING=UTF8          # the LATIN1 check overrides this locally
export LC_ALL=C.UTF-8 2>/dev/null || true

START=$SECONDS
DEADLINE=$((SECONDS + 50))            # whole script stays well under 60 s
SUFFIX="$(date +%s%N | tail -c 7)${RANDOM}"
T="psql_${SUFFIX}"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/pgstepup-psql.XXXXXX")"
FAILED=0
PG_USER="${PGUSER:-$(id -un)}"
PG_DB="${PGDATABASE:-$PG_USER}"

# ---------------------------------------------------------------- helpers
ok()   { echo "ok $1"; }
fail() { echo "FAIL $1: $(printf '%s' "$2" | tr '\n\r' '||' | head -c 600)"; FAILED=1; }
# expect NAME EXPECTED ACTUAL
expect() {
    if [ "$2" == "$3" ]; then ok "$1"; else fail "$1" "expected [$2] got [$3]"; fi
}

# Per-call timeout: at most 15 s, and never past the global deadline.
budget() {
    local t=$((DEADLINE - SECONDS))
    ((t > 15)) && t=15
    ((t < 1)) && t=1
    echo "$t"
}

# q ARGS...: run psql unaligned/tuples-only, stop on first error, never prompt.
# stdout -> stdout, stderr -> stderr (callers redirect as needed).
q() {
    timeout -k 2 "$(budget)" psql -X -w -q -A -t -v ON_ERROR_STOP=1 -v VERBOSITY=verbose "$@"
}

CONNECTED=0
cleanup() {
    [ "$CONNECTED" = 1 ] && q -c "DROP TABLE IF EXISTS ${T}_fk, ${T}_meta, ${T}_tx, ${T}_copy, ${T}_types, ${T}_latin1" >/dev/null 2>&1
    rm -rf "$WORK"
}
trap cleanup EXIT

past_deadline() { ((SECONDS >= DEADLINE)); }

# ---------------------------------------------------------------- checks

# 0. connect: right user and database; TLS in use exactly when PGSSLMODE asks
check_connect() {
    local out info
    out=$(q -c "select current_user = '$PG_USER', current_database() = '$PG_DB'" 2>&1)
    if [ "$out" != "t|t" ]; then
        fail connect "expected [t|t] got [$out]"
        return 1
    fi
    info=$(q -c '\conninfo' 2>&1)
    if [ "${PGSSLMODE:-disable}" = disable ]; then
        grep -q "^SSL connection" <<<"$info" && { fail connect "TLS in use with PGSSLMODE=disable: $info"; return 1; }
    else
        grep -q "^SSL connection (protocol: TLS" <<<"$info" || { fail connect "no TLS with PGSSLMODE=$PGSSLMODE: $info"; return 1; }
    fi
    ok connect
}

# 1. simple query protocol, two statements in one Query message
check_simple_query_multi_statement() {
    local out
    out=$(q -c 'select 1; select 2' 2>&1)
    expect simple_query_multi_statement "$(printf '1\n2')" "$out"
}

# 2. parameters (psql 15 has no \bind, so PREPARE/EXECUTE in SQL)
check_params_prepare_execute() {
    local out
    out=$(q -f - 2>&1 <<'SQL'
PREPARE p_params(int, text) AS SELECT $1 + 1, upper($2), pg_typeof($1);
EXECUTE p_params(41, 'abc é');
SQL
)
    expect params_prepare_execute "42|ABC É|integer" "$out"
}

# 3. the same prepared statement executed many times in one session
check_prepared_reuse() {
    local out expected="" i sql="PREPARE p_reuse(int) AS SELECT \$1 * 2, md5(\$1::text);"$'\n'
    for i in $(seq 1 10); do
        sql+="EXECUTE p_reuse($i);"$'\n'
        expected+="$((i * 2))|$(printf '%s' "$i" | md5sum | cut -d' ' -f1)"$'\n'
    done
    sql+="SELECT count(*) FROM pg_prepared_statements WHERE name = 'p_reuse';"$'\n'
    expected+="1"
    out=$(printf '%s' "$sql" | q -f - 2>&1)
    expect prepared_reuse "$expected" "$out"
}

# 4. rollback, commit and savepoint rollback
check_transactions() {
    local out
    out=$(q -f - 2>&1 <<SQL
CREATE TABLE ${T}_tx (id int PRIMARY KEY, v text);
BEGIN; INSERT INTO ${T}_tx VALUES (1, 'rolled back'); ROLLBACK;
SELECT 'after rollback', count(*) FROM ${T}_tx WHERE id = 1;
BEGIN; INSERT INTO ${T}_tx VALUES (2, 'committed'); COMMIT;
SELECT 'after commit', v FROM ${T}_tx WHERE id = 2;
BEGIN;
INSERT INTO ${T}_tx VALUES (3, 'kept');
SAVEPOINT s1;
INSERT INTO ${T}_tx VALUES (4, 'undone by savepoint');
ROLLBACK TO SAVEPOINT s1;
INSERT INTO ${T}_tx VALUES (5, 'after savepoint');
COMMIT;
SELECT 'final', string_agg(id::text, ',' ORDER BY id) FROM ${T}_tx;
SQL
)
    expect transactions "$(printf 'after rollback|0\nafter commit|committed\nfinal|2,3,5')" "$out"
}

# 5. \copy from a file and back to a file (text format, escapes, NULLs, unicode)
check_copy_in_out() {
    local in="$WORK/copy_in.txt" outf="$WORK/copy_out.txt" out
    # Row i: id, a value with an escaped tab, unicode, and a NULL every 7th row.
    awk 'BEGIN { for (i = 1; i <= 20000; i++) {
            v = (i % 7 == 0) ? "\\N" : "row " i "\\tcol é✓ \\\\ end";
            printf "%d\t%s\t%d\n", i, v, i * 3 } }' > "$in"
    out=$(q -f - 2>&1 <<SQL
CREATE TABLE ${T}_copy (id int PRIMARY KEY, v text, n bigint);
\copy ${T}_copy FROM '$in'
\copy (SELECT * FROM ${T}_copy ORDER BY id) TO '$outf'
SELECT count(*), sum(n), count(*) FILTER (WHERE v IS NULL),
       count(*) FILTER (WHERE v = 'row ' || id || E'\t' || 'col é✓ ' || chr(92) || ' end') FROM ${T}_copy;
SQL
)
    local expected="20000|600030000|2857|17143"
    if [ "$out" != "$expected" ]; then
        fail copy_in_out "server-side counts: expected [$expected] got [$out]"
    elif ! cmp -s "$in" "$outf"; then
        fail copy_in_out "file copied out differs from file copied in: $(cmp "$in" "$outf" 2>&1)"
    else
        ok copy_in_out
    fi
}

# 6. LISTEN in one psql, NOTIFY from another while the listener is idle
check_listen_notify() {
    local chan="${T}_chan" payload="payload é ✓ ${SUFFIX}" out lpid i
    q -f - > "$WORK/listen.out" 2>&1 <<SQL &
LISTEN ${chan};
\! touch '$WORK/listening'; i=0; while [ ! -f '$WORK/notified' ] && [ \$i -lt 100 ]; do sleep 0.1; i=\$((i+1)); done; sleep 0.5
SELECT 'listener done';
SQL
    lpid=$!
    for i in $(seq 1 100); do
        [ -f "$WORK/listening" ] && break
        kill -0 "$lpid" 2>/dev/null || break     # listener died (connect error)
        sleep 0.1
    done
    out=$(q -c "NOTIFY ${chan}, '${payload}'" 2>&1)
    touch "$WORK/notified"
    wait "$lpid"
    local listener
    listener=$(cat "$WORK/listen.out")
    if [ -n "$out" ]; then
        fail listen_notify "NOTIFY failed: $out"
    elif ! grep -q "^Asynchronous notification \"${chan}\" with payload \"${payload}\" received from server process with PID [0-9]*\.$" <<<"$listener"; then
        fail listen_notify "listener output: $listener"
    elif ! grep -q "^listener done$" <<<"$listener"; then
        fail listen_notify "listener did not finish cleanly: $listener"
    else
        ok listen_notify
    fi
}

# 7. SIGINT to psql makes it send a CancelRequest
check_cancel() {
    local out pid t0 t1 i rc
    # Run psql directly (not under timeout(1)) so SIGINT reaches psql itself.
    local marker="cancel_${T}"
    psql -X -w -q -A -t -v VERBOSITY=verbose -c "select pg_sleep(30) /* ${marker} */" > "$WORK/cancel.out" 2>&1 &
    pid=$!
    # Wait (max 5 s) until the query is really running, then ~0.5 s more.
    for i in $(seq 1 50); do
        [ "$(q -c "select count(*) from pg_stat_activity where state = 'active' and query like '%/* ${marker} */' and pid <> pg_backend_pid()" 2>/dev/null)" = 1 ] && break
        sleep 0.1
    done
    sleep 0.5
    t0=$(date +%s%N)
    kill -INT "$pid" 2>/dev/null
    for i in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
        kill -KILL "$pid" 2>/dev/null
        wait "$pid" 2>/dev/null
        fail cancel "psql still running 10 s after SIGINT"
        return
    fi
    wait "$pid"; rc=$?
    t1=$(date +%s%N)
    out=$(cat "$WORK/cancel.out")
    local ms=$(((t1 - t0) / 1000000))
    if ! grep -q "ERROR:  57014: canceling statement due to user request" <<<"$out"; then
        fail cancel "rc=$rc output: $out"
    elif ((ms > 5000)); then
        fail cancel "cancel took ${ms} ms"
    else
        ok cancel
    fi
}

# 8. an error, then good queries on the same connection (also for a
#    prepared statement and inside a transaction with ON_ERROR_ROLLBACK)
check_error_recovery() {
    local out err
    out=$(q -v ON_ERROR_STOP=0 -f - 2>"$WORK/err.txt" <<'SQL'
select 1/0;
select 2;
PREPARE p_err(int) AS SELECT 10 / $1;
EXECUTE p_err(0);
EXECUTE p_err(5);
\set ON_ERROR_ROLLBACK on
BEGIN;
select 'in tx';
select 1/0;
select 3;
COMMIT;
SQL
)
    err=$(cat "$WORK/err.txt")
    local n
    n=$(grep -c "ERROR:  22012: division by zero" <<<"$err")
    if [ "$n" != 3 ]; then
        fail error_recovery "expected 3 x 22012 on stderr, got $n: $err"
    else
        expect error_recovery "$(printf '2\n2\nin tx\n3')" "$out"
    fi
}

# 9. 100k-row result: count, sum and an md5 of the whole text output
check_big_result() {
    local out expected_md5 stats
    q -F, -c "select g, md5(g::text) from generate_series(1,100000) g" > "$WORK/big.txt" 2>&1
    stats=$(awk -F, '{ n++; s += $1 } END { printf "%d %d", n, s }' "$WORK/big.txt")
    expected_md5=$(q -c "select md5(string_agg(g || ',' || md5(g::text), E'\n' ORDER BY g) || E'\n') from generate_series(1,100000) g" 2>&1)
    out=$(md5sum < "$WORK/big.txt" | cut -d' ' -f1)
    if [ "$stats" != "100000 5000050000" ]; then
        fail big_result "count/sum: expected [100000 5000050000] got [$stats] ($(head -c 200 "$WORK/big.txt"))"
    else
        expect big_result "$expected_md5" "$out"
    fi
}

# 10. types round trip (psql only speaks text: literals in, text out)
check_types_round_trip() {
    local hex out expected
    hex=$(for i in $(seq 0 255); do printf '%02x' "$i"; done)
    out=$(q -f - 2>&1 <<SQL
SET timezone = 'Asia/Tokyo';
CREATE TABLE ${T}_types (t text, b bytea, ts timestamptz, n numeric, ia int[], ta text[], j jsonb);
INSERT INTO ${T}_types VALUES (
  'héllo wörld ✓ 日本語 🎉',
  '\\x${hex}',
  '2024-03-15 12:34:56.789123+05:30',
  12345678901234567890.123456789012345,
  '{1,2,3}',
  '{"a b",c,NULL,"é\\"q"}',
  '{"outer": {"list": [1, 2.50, {"deep": null}], "s": "é✓"}, "b": true}');
SELECT t FROM ${T}_types;
SELECT length(t), octet_length(t) FROM ${T}_types;
SELECT b FROM ${T}_types;
SELECT length(b), get_byte(b, 0), get_byte(b, 255) FROM ${T}_types;
SELECT ts FROM ${T}_types;
SELECT n FROM ${T}_types;
SELECT ia, ia[2] FROM ${T}_types;
SELECT ta, ta[4], ta[3] IS NULL FROM ${T}_types;
SELECT j, j->'outer'->'list'->>1 FROM ${T}_types;
SQL
)
    expected=$(cat <<EOF
héllo wörld ✓ 日本語 🎉
19|32
\\x${hex}
256|0|255
2024-03-15 16:04:56.789123+09
12345678901234567890.123456789012345
{1,2,3}|2
{"a b",c,NULL,"é\\"q"}|é"q|t
{"b": true, "outer": {"s": "é✓", "list": [1, 2.50, {"deep": null}]}}|2.50
EOF
)
    expect types_round_trip "$expected" "$out"
}

# 11. a LATIN1 session: the query file is LATIN1 bytes, results come back LATIN1
check_latin1_client_encoding() {
    local f="$WORK/latin1.sql" out expected utf
    printf "CREATE TABLE ${T}_latin1 (v text);\n" > "$f"
    printf "INSERT INTO ${T}_latin1 VALUES ('\xe9t\xe9 na\xefve');\n" >> "$f"
    printf "SHOW client_encoding;\n" >> "$f"
    printf "SELECT ascii('\xe9'), octet_length(convert_to('\xe9', 'UTF8')), '\xe9caf\xe9';\n" >> "$f"
    printf "SELECT v FROM ${T}_latin1;\n" >> "$f"
    out=$(PGCLIENTENCODING=LATIN1 q -f "$f" 2>&1 | od -An -tx1 | tr -d ' \n')
    expected=$(printf 'LATIN1\n233|2|\xe9caf\xe9\n\xe9t\xe9 na\xefve\n' | od -An -tx1 | tr -d ' \n')
    utf=$(q -c "SELECT v, length(v), octet_length(v) FROM ${T}_latin1" 2>&1)
    if [ "$out" != "$expected" ]; then
        fail latin1_client_encoding "latin1 session bytes: expected [$expected] got [$out]"
    else
        expect latin1_client_encoding "été naïve|9|12" "$utf"
    fi
}

# psql meta-commands: \d table, \dt, \l
check_meta_describe_table() {
    local d
    q -c "CREATE TABLE ${T}_meta (id integer PRIMARY KEY, label text NOT NULL, created timestamptz DEFAULT now())" >/dev/null 2>&1
    q -c "CREATE TABLE ${T}_fk (id int PRIMARY KEY, meta_id int REFERENCES ${T}_meta(id))" >/dev/null 2>&1
    d=$(timeout -k 2 "$(budget)" psql -X -w -c "\\d ${T}_meta" 2>&1)
    if ! grep -q "Table \"public.${T}_meta\"" <<<"$d" \
        || ! grep -Eq '^ id +\| integer +\|' <<<"$d" \
        || ! grep -Eq '^ label +\| text +\| +\| not null' <<<"$d" \
        || ! grep -Eq '^ created +\| timestamp with time zone' <<<"$d" \
        || ! grep -q "\"${T}_meta_pkey\" PRIMARY KEY, btree (id)" <<<"$d" \
        || ! grep -q "TABLE \"${T}_fk\" CONSTRAINT" <<<"$d"; then
        fail meta_describe_table "\\d output: $d"
    else
        ok meta_describe_table
    fi
}

check_meta_list_tables() {
    local dt
    dt=$(timeout -k 2 "$(budget)" psql -X -w -c '\dt' 2>&1)
    if grep -Eq "^ public +\| ${T}_meta +\| table +\| $PG_USER" <<<"$dt" \
        && grep -Eq "^ public +\| ${T}_fk +\| table +\| $PG_USER" <<<"$dt"; then
        ok meta_list_tables
    else
        fail meta_list_tables "\\dt output: $dt"
    fi
}

check_meta_list_databases() {
    local l db="$PG_DB"
    l=$(timeout -k 2 "$(budget)" psql -X -w -A -c '\l' 2>&1)
    if grep -q "^${db}|$PG_USER|" <<<"$l" && grep -q "^List of databases" <<<"$l"; then
        ok meta_list_databases
    else
        fail meta_list_databases "\\l output: $l"
    fi
}

# ---------------------------------------------------------------- main
CHECKS=(check_simple_query_multi_statement check_params_prepare_execute
        check_prepared_reuse check_transactions check_copy_in_out check_listen_notify
        check_cancel check_error_recovery check_big_result check_types_round_trip
        check_latin1_client_encoding check_meta_describe_table check_meta_list_tables
        check_meta_list_databases)
check_connect && CONNECTED=1
for c in "${CHECKS[@]}"; do
    if [ "$CONNECTED" = 0 ]; then
        fail "${c#check_}" "skipped: cannot connect"
    elif past_deadline; then
        fail "${c#check_}" "skipped: global deadline reached"
    else
        "$c"
    fi
done

echo "# psql client: $((SECONDS - START)) s"
exit "$FAILED"
