#!/usr/bin/env node
// Real-client protocol checks with node-postgres (pg) and pg-copy-streams.
//
// The connection comes only from the libpq environment variables PGHOST,
// PGPORT, PGUSER, PGPASSWORD, PGDATABASE, PGSSLMODE, PGSSLROOTCERT, turned
// into a pg config here. Prints one line per check: "ok <name>" or
// "FAIL <name>: <details>". Exits 0 only when every check passed.
'use strict'

const crypto = require('crypto')
const fs = require('fs')
const net = require('net')
const os = require('os')
const tls = require('tls')
const util = require('util')
const { Readable } = require('stream')
const { pipeline } = require('stream/promises')
let Client, copyFrom, copyTo
try {
  ;({ Client } = require('pg'))
  ;({ from: copyFrom, to: copyTo } = require('pg-copy-streams'))
} catch (e) {
  console.log(`FAIL setup: ${e.message.split('\n')[0]} (run 'npm ci' in ${__dirname})`)
  process.exit(1)
}

const GLOBAL_TIMEOUT_MS = 55000
const SUFFIX = crypto.randomBytes(6).toString('hex')
const T = `node_${SUFFIX}`
const TABLES = [`${T}_tx`, `${T}_copy`]
let failed = false

// ------------------------------------------------------------ helpers

class CheckFailed extends Error {}

function ok(name) {
  console.log(`ok ${name}`)
}

function fail(name, details) {
  failed = true
  console.log(`FAIL ${name}: ${String(details).replace(/\s+/g, ' ').slice(0, 600)}`)
}

function expect(what, expected, actual) {
  if (!util.isDeepStrictEqual(expected, actual)) {
    throw new CheckFailed(`${what}: expected ${util.inspect(expected)} got ${util.inspect(actual)}`)
  }
}

async function expectError(what, code, promise) {
  try {
    await promise
  } catch (e) {
    if (e instanceof CheckFailed) throw e
    expect(`${what} sqlstate`, code, e.code)
    return e
  }
  throw new CheckFailed(`${what}: no error raised, expected ${code}`)
}

function withTimeout(promise, ms, what) {
  let timer
  return Promise.race([
    promise,
    new Promise((_, reject) => {
      timer = setTimeout(() => reject(new CheckFailed(`${what}: timed out after ${ms} ms`)), ms)
    }),
  ]).finally(() => clearTimeout(timer))
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

function md5(s) {
  return crypto.createHash('md5').update(s).digest('hex')
}

const env = process.env
const PGUSER = env.PGUSER || os.userInfo().username
const PGHOST = env.PGHOST || 'localhost'
const PGPORT = Number(env.PGPORT || 5432)
const SSLMODE = env.PGSSLMODE || 'disable'

function sslOptions() {
  switch (SSLMODE) {
    case 'disable':
      return false
    case 'require':
      return { rejectUnauthorized: false }
    case 'verify-ca':
      return { ca: fs.readFileSync(env.PGSSLROOTCERT), rejectUnauthorized: true, checkServerIdentity: () => undefined }
    case 'verify-full':
      return { ca: fs.readFileSync(env.PGSSLROOTCERT), rejectUnauthorized: true }
    default:
      throw new Error(`unsupported PGSSLMODE ${SSLMODE}`)
  }
}

function pgConfig(extra = {}) {
  return {
    host: PGHOST,
    port: PGPORT,
    user: PGUSER,
    password: env.PGPASSWORD,
    database: env.PGDATABASE || PGUSER,
    ssl: sslOptions(),
    connectionTimeoutMillis: 10000,
    application_name: 'pgstepup-node',
    ...extra,
  }
}

// Open clients are tracked so each check can close what it opened.
async function connect(extra) {
  const c = new Client(pgConfig(extra))
  c.on('error', () => {}) // reported through the failing query instead
  await c.connect()
  return c
}

async function withClients(n, fn) {
  const clients = []
  try {
    for (let i = 0; i < n; i++) clients.push(await connect())
    return await fn(...clients)
  } finally {
    await Promise.all(clients.map((c) => c.end().catch(() => {})))
  }
}

async function one(c, text, values) {
  const res = await c.query({ text, values, rowMode: 'array' })
  return res.rows[0][0]
}

// A wire-level CancelRequest on a fresh connection (node-postgres has no
// public cancel API). With PGSSLMODE other than disable the connection is
// first upgraded with an SSLRequest, using the same TLS options.
function sendCancelRequest(pid, secretKey) {
  const pkt = Buffer.alloc(16)
  pkt.writeInt32BE(16, 0)
  pkt.writeInt32BE(80877102, 4)
  pkt.writeInt32BE(pid, 8)
  pkt.writeInt32BE(secretKey, 12)
  return new Promise((resolve, reject) => {
    let sent = false
    const sock = net.connect(PGPORT, PGHOST)
    const timer = setTimeout(() => {
      sock.destroy()
      reject(new Error('cancel request connection timed out'))
    }, 10000)
    const done = (err) => {
      clearTimeout(timer)
      if (err && !sent) reject(err)
      else resolve()
    }
    const send = (s) => {
      s.on('close', () => done())
      s.on('error', (e) => done(e))
      s.write(pkt, () => {
        sent = true
        s.end()
      })
    }
    sock.on('error', (e) => done(e))
    sock.once('connect', () => {
      const ssl = sslOptions()
      if (!ssl) return send(sock)
      const sslRequest = Buffer.alloc(8)
      sslRequest.writeInt32BE(8, 0)
      sslRequest.writeInt32BE(80877103, 4)
      sock.write(sslRequest)
      sock.once('data', (b) => {
        if (b[0] !== 0x53 /* 'S' */) {
          sock.destroy()
          return done(new Error(`server refused SSL for the cancel request: ${b.toString('latin1', 0, 1)}`))
        }
        const opts = { socket: sock, ...ssl }
        if (net.isIP(PGHOST) === 0) opts.servername = PGHOST
        const tsock = tls.connect(opts, () => send(tsock))
        tsock.on('error', (e) => done(e))
      })
    })
  })
}

// ------------------------------------------------------------ checks

// 0. connect: right user and database; TLS in use exactly when PGSSLMODE asks
async function checkConnect() {
  await withClients(1, async (c) => {
    expect('user/database', [PGUSER, env.PGDATABASE || PGUSER],
      (await c.query({ text: 'select current_user, current_database()', rowMode: 'array' })).rows[0])
    expect('client-side TLS in use', SSLMODE !== 'disable', c.connection.stream instanceof tls.TLSSocket)
  })
}

// 1. a simple Query with two statements returns an array of results
async function checkMultiStatement() {
  await withClients(1, async (c) => {
    const res = await c.query("select 1 as a; select 'two' as b, 2 as c")
    expect('is array', true, Array.isArray(res))
    expect('result count', 2, res.length)
    expect('first', [{ a: 1 }], res[0].rows)
    expect('second', [{ b: 'two', c: 2 }], res[1].rows)
  })
}

// 2. extended query with values
async function checkExtendedParams() {
  await withClients(1, async (c) => {
    const res = await c.query(
      'select $1::int + 1 as n, upper($2) as u, pg_typeof($3::bigint)::text as t, $4::text is null as isnull',
      [41, 'abc é', '7', null]
    )
    expect('row', [{ n: 42, u: 'ABC É', t: 'bigint', isnull: true }], res.rows)
  })
}

// 3. a named query config executed many times (Parse once, then Bind/Execute)
async function checkPreparedReuse() {
  await withClients(1, async (c) => {
    for (let i = 1; i <= 10; i++) {
      const res = await c.query({
        name: 'q1',
        text: 'select $1::int * 2 as d, md5($2) as m',
        values: [i, String(i)],
      })
      expect(`iteration ${i}`, [{ d: i * 2, m: md5(String(i)) }], res.rows)
    }
    expect(
      'q1 on the server',
      ['select $1::int * 2 as d, md5($2) as m'],
      (await c.query("select statement from pg_prepared_statements where name = 'q1'")).rows.map((r) => r.statement)
    )
  })
}

// 4. rollback, commit, savepoint rollback
async function checkTransactions() {
  const t = `${T}_tx`
  await withClients(2, async (c, other) => {
    await c.query(`create table ${t} (id int primary key, v text)`)
    const ins = (id, v) => c.query(`insert into ${t} values ($1, $2)`, [id, v])
    await c.query('BEGIN')
    await ins(1, 'rolled back')
    await c.query('ROLLBACK')
    expect('after rollback', '0', await one(c, `select count(*) from ${t}`))
    await c.query('BEGIN')
    await ins(2, 'committed')
    await c.query('COMMIT')
    await c.query('BEGIN')
    await ins(3, 'kept')
    await c.query('SAVEPOINT s1')
    await ins(4, 'undone by savepoint')
    await c.query('ROLLBACK TO SAVEPOINT s1')
    await ins(5, 'after savepoint')
    await c.query('SAVEPOINT s2')
    await expectError('duplicate key', '23505', ins(2, 'duplicate'))
    await c.query('ROLLBACK TO SAVEPOINT s2')
    await ins(6, 'after failed savepoint')
    await c.query('COMMIT')
    expect(
      'rows seen by another connection',
      '2:committed,3:kept,5:after savepoint,6:after failed savepoint',
      await one(other, `select string_agg(id || ':' || v, ',' order by id) from ${t}`)
    )
  })
}

// 5. COPY FROM STDIN / TO STDOUT with pg-copy-streams
async function checkCopy() {
  const t = `${T}_copy`
  const n = 50000
  const lines = []
  for (let i = 1; i <= n; i++) {
    const v = i % 11 === 0 ? '\\N' : `row ${i}\\twith tab é✓ \\\\ ${i * 7}`
    lines.push(`${i}\t${v}\t${i * 3}\n`)
  }
  const input = lines.join('')
  const inHash = crypto.createHash('sha256').update(input).digest('hex')
  await withClients(1, async (c) => {
    await c.query(`create table ${t} (id int primary key, v text, n bigint)`)
    // write in many small chunks, as a streaming producer would
    const chunks = []
    for (let i = 0; i < lines.length; i += 500) chunks.push(Buffer.from(lines.slice(i, i + 500).join('')))
    const inStream = c.query(copyFrom(`COPY ${t} FROM STDIN`))
    await withTimeout(pipeline(Readable.from(chunks), inStream), 20000, 'copy in')
    expect('rowCount in', n, inStream.rowCount)
    expect(
      'server count/sum/nulls',
      [String(n), String((3 * n * (n + 1)) / 2), String(Math.floor(n / 11))],
      (await c.query({ text: `select count(*), sum(n), count(*) filter (where v is null) from ${t}`, rowMode: 'array' })).rows[0]
    )
    const outStream = c.query(copyTo(`COPY (select * from ${t} order by id) TO STDOUT`))
    const hash = crypto.createHash('sha256')
    let bytes = 0
    let newlines = 0
    await withTimeout(
      (async () => {
        for await (const chunk of outStream) {
          hash.update(chunk)
          bytes += chunk.length
          for (const b of chunk) if (b === 10) newlines++
        }
      })(),
      20000,
      'copy out'
    )
    expect('rows out', n, newlines)
    expect('bytes out', Buffer.byteLength(input), bytes)
    expect('checksum', inHash, hash.digest('hex'))
    expect('connection usable after copy', 7, await one(c, 'select 7'))
  })
}

// 6. LISTEN on one connection, NOTIFY from another while the listener is idle
async function checkListenNotify() {
  const chan = `${T}_chan`
  const payload = `payload é ✓ ${SUFFIX}`
  await withClients(2, async (listener, notifier) => {
    const received = new Promise((resolve) => listener.once('notification', resolve))
    await listener.query(`LISTEN ${chan}`)
    await sleep(500) // the listener is idle: nothing is sent on it from now on
    await notifier.query('select pg_notify($1, $2)', [chan, payload])
    const msg = await withTimeout(received, 10000, 'notification')
    // pg_backend_pid() rather than BackendKeyData: a proxy may hand out its own keys
    const notifierPid = await one(notifier, 'select pg_backend_pid()')
    expect('notification', { channel: chan, payload, processId: notifierPid },
      { channel: msg.channel, payload: msg.payload, processId: msg.processId })
  })
}

// 7. CancelRequest built by hand from the client's BackendKeyData
async function checkCancel() {
  await withClients(1, async (c) => {
    expect('has BackendKeyData', true, Number.isInteger(c.processID) && Number.isInteger(c.secretKey))
    const t0 = Date.now()
    const running = c.query('select pg_sleep(30)')
    running.catch(() => {})
    await sleep(500)
    await sendCancelRequest(c.processID, c.secretKey)
    await withTimeout(expectError('pg_sleep(30)', '57014', running), 10000, 'cancelled query')
    const ms = Date.now() - t0
    if (ms > 5000) throw new CheckFailed(`cancel took ${ms} ms`)
    expect('connection usable after cancel', 3, await one(c, 'select 3'))
  })
}

// 8. errors followed by good queries: simple, extended, named, in a transaction
async function checkErrorRecovery() {
  await withClients(1, async (c) => {
    await expectError('select 1/0', '22012', c.query('select 1/0'))
    expect('after simple error', 2, await one(c, 'select 2'))
    await expectError('extended 10/0', '22012', c.query('select 10 / $1::int', [0]))
    expect('after extended error', 2, await one(c, 'select 10 / $1::int', [5]))
    for (let i = 0; i < 6; i++) {
      const q = { name: 'div', text: 'select 10 / $1::int as r', values: [i % 2 === 0 ? 0 : 5] }
      if (i % 2 === 0) await expectError(`named 10/0 #${i}`, '22012', c.query(q))
      else expect(`named 10/5 #${i}`, [{ r: 2 }], (await c.query(q)).rows)
    }
    await c.query('BEGIN')
    await expectError('1/0 in tx', '22012', c.query('select 1/0'))
    await expectError('query in aborted tx', '25P02', c.query('select 1'))
    await c.query('ROLLBACK')
    expect('after rollback', 4, await one(c, 'select 4'))
  })
}

// 9. 100k rows, fully read, per-row md5 verified
async function checkBigResult() {
  const n = 100000
  await withClients(1, async (c) => {
    const res = await c.query({ text: 'select g, md5(g::text) from generate_series(1, $1::int) g', values: [n], rowMode: 'array' })
    let sum = 0
    let bad = 0
    for (const [g, m] of res.rows) {
      sum += g
      if (m !== md5(String(g))) bad++
    }
    expect('count/sum/bad md5', [n, (n * (n + 1)) / 2, 0], [res.rows.length, sum, bad])
    expect('rowCount', n, res.rowCount)
  })
}

// 10. types as parameters and back
async function checkTypes() {
  const text = 'héllo wörld ✓ 日本語 🎉'
  const blob = Buffer.from([...Array(256).keys()])
  const tsText = '2024-03-15T12:34:56.789123+05:30'
  const num = '12345678901234567890.123456789012345'
  const ints = [1, 2, 3, -2147483648]
  const texts = ['a b', 'c', null, 'é"q\\', '']
  const doc = { outer: { list: [1, 2.5, { deep: null }], s: 'é✓' }, b: true, n: '12' }
  await withClients(1, async (c) => {
    await c.query("set timezone = 'Asia/Tokyo'")
    const res = await c.query(
      `select $1::text as t, $2::bytea as b, $3::timestamptz as ts, $3::timestamptz::text as tstext,
              $4::timestamptz as tsdate, $5::numeric as n, $6::int[] as ia, $7::text[] as ta, $8::jsonb as j,
              octet_length($1::text) as octets, md5($2::bytea) as bmd5`,
      [text, blob, tsText, new Date('2024-03-15T12:34:56.789+05:30'), num, ints, texts, JSON.stringify(doc)]
    )
    const r = res.rows[0]
    expect('text', text, r.t)
    expect('bytea', true, Buffer.isBuffer(r.b) && r.b.equals(blob))
    expect('timestamptz', Date.parse('2024-03-15T12:34:56.789+05:30'), r.ts.getTime())
    expect('timestamptz text', '2024-03-15 16:04:56.789123+09', r.tstext)
    expect('timestamptz from Date', Date.parse('2024-03-15T12:34:56.789+05:30'), r.tsdate.getTime())
    expect('numeric', num, r.n)
    expect('int[]', ints, r.ia)
    expect('text[]', texts, r.ta)
    expect('jsonb', doc, r.j)
    expect('text octets on server', 32, r.octets)
    expect('bytea md5 on server', crypto.createHash('md5').update(blob).digest('hex'), r.bmd5)
  })
}

// 11. client_encoding LATIN1 (pg itself decodes UTF-8 only): switch, observe, reset
async function checkLatin1() {
  await withClients(1, async (c) => {
    expect('initial', 'UTF8', await one(c, 'show client_encoding'))
    await c.query("SET client_encoding TO 'LATIN1'")
    expect('after SET', 'LATIN1', await one(c, 'show client_encoding'))
    // The server now sends é as the single byte 0xE9, which node-postgres
    // (UTF-8 decoder) turns into U+FFFD; ASCII still round-trips.
    expect('é as LATIN1 byte', ['\uFFFD', 233, 'plain ascii'],
      (await c.query({ text: "select chr(233), ascii(chr(233)), 'plain ascii'", rowMode: 'array' })).rows[0])
    await c.query('RESET client_encoding')
    expect('after RESET', 'UTF8', await one(c, 'show client_encoding'))
    expect('é after RESET', 'é', await one(c, 'select chr(233)'))
  })
}

// ------------------------------------------------------------ main

const CHECKS = [
  ['simple_query_multi_statement', checkMultiStatement],
  ['extended_params', checkExtendedParams],
  ['prepared_reuse', checkPreparedReuse],
  ['transactions', checkTransactions],
  ['copy_in_out', checkCopy],
  ['listen_notify', checkListenNotify],
  ['cancel', checkCancel],
  ['error_recovery', checkErrorRecovery],
  ['big_result', checkBigResult],
  ['types_round_trip', checkTypes],
  ['latin1_client_encoding', checkLatin1],
]

async function cleanup() {
  try {
    await withClients(1, (c) => c.query(`drop table if exists ${TABLES.join(', ')}`))
  } catch (e) {
    console.error(`# cleanup failed: ${e.message}`)
  }
}

async function runCheck(name, fn) {
  try {
    await withTimeout(fn(), 30000, name)
    ok(name)
    return true
  } catch (e) {
    const code = e.code ? ` [${e.code}]` : ''
    fail(name, e instanceof CheckFailed ? e.message : `${e.constructor.name}${code}: ${e.message}`)
    return false
  }
}

async function main() {
  const start = Date.now()
  setTimeout(() => {
    console.log(`FAIL watchdog: script still running after ${GLOBAL_TIMEOUT_MS / 1000} s`)
    process.exit(1)
  }, GLOBAL_TIMEOUT_MS).unref()
  const connected = await runCheck('connect', checkConnect)
  try {
    for (const [name, fn] of CHECKS) {
      if (connected) await runCheck(name, fn)
      else fail(name, 'skipped: cannot connect')
    }
  } finally {
    if (connected) await withTimeout(cleanup(), 10000, 'cleanup').catch((e) => console.error(`# ${e.message}`))
  }
  console.log(`# node client: ${((Date.now() - start) / 1000).toFixed(1)} s`)
  process.exit(failed ? 1 : 0)
}

main()
