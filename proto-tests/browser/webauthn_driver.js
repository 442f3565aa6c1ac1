#!/usr/bin/env node
// Browser driver for pgstepup's web tests: headless Debian Chromium with a
// virtual WebAuthn authenticator (CTAP2.1, resident keys, user verification
// always succeeds), driven over stdin/stdout.
//
//   node proto-tests/browser/webauthn_driver.js
//
// Environment: CHROMIUM (default /usr/bin/chromium).
//
// Reads one JSON command per line on stdin and writes exactly one JSON line per
// command on stdout (nothing else goes to stdout; logs go to stderr):
//
//   {"enroll": URL}                 -> {"result": TEXT}   (#enroll clicked, #result text)
//   {"approve": URL}                -> {"result": TEXT}   (#approve)
//   {"deny": URL}                   -> {"result": TEXT}   (#deny)
//   {"pending": URL, "user": NAME}  -> {"result": TEXT, "approve_urls": [absolute hrefs]}
//   {"credentials": true}           -> {"count": N}       (credentials in the authenticator)
//   {"quit": true}                  -> {"quit": true}, then the browser closes and the process exits 0
//   anything failing                -> {"error": MESSAGE} (with the page's console errors)
//
// One browser, one context and one page serve the whole run, so the
// authenticator's credentials persist from command to command. Each command
// has 20 s. End of stdin acts like quit.
//
// The pages mark <body data-loaded="true"> when their first request is done. If
// the button to click is disabled then (request already decided, expired or the
// link is invalid), the reply is the #result text shown at load.
'use strict'

const readline = require('readline')
let chromium
try {
  ;({ chromium } = require('playwright-core'))
} catch (e) {
  process.stdout.write(JSON.stringify({ error: `setup: ${e.message.split('\n')[0]} (run 'npm ci' in ${__dirname})` }) + '\n')
  process.exit(1)
}

const COMMAND_TIMEOUT_MS = 20000
// #result text that ends an enroll/approve/deny action (progress texts never match).
const FINAL_RE = /approved|denied|expired|cancelled|enrolled|invalid|error/

function log (...args) {
  console.error('[webauthn_driver]', ...args)
}

function reply (obj) {
  process.stdout.write(JSON.stringify(obj) + '\n')
}

let browser = null
let page = null
let cdp = null
let authenticatorId = null
let consoleErrors = []

async function setup () {
  const executablePath = process.env.CHROMIUM || '/usr/bin/chromium'
  browser = await chromium.launch({
    executablePath,
    headless: true,
    args: ['--headless=new', '--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage']
  })
  const context = await browser.newContext()
  page = await context.newPage()
  page.setDefaultTimeout(COMMAND_TIMEOUT_MS)
  page.on('console', (msg) => {
    if (msg.type() === 'error') consoleErrors.push(`console: ${msg.text()}`)
  })
  page.on('pageerror', (err) => consoleErrors.push(`page error: ${err.message}`))
  page.on('requestfailed', (req) => {
    const f = req.failure()
    consoleErrors.push(`request failed: ${req.method()} ${req.url()}${f ? ' ' + f.errorText : ''}`)
  })
  cdp = await context.newCDPSession(page)
  await cdp.send('WebAuthn.enable', { enableUI: false })
  const r = await cdp.send('WebAuthn.addVirtualAuthenticator', {
    options: {
      protocol: 'ctap2',
      ctap2Version: 'ctap2_1',
      transport: 'internal',
      hasResidentKey: true,
      hasUserVerification: true,
      isUserVerified: true,
      automaticPresenceSimulation: true
    }
  })
  authenticatorId = r.authenticatorId
  log(`chromium ${browser.version()} from ${executablePath}, virtual authenticator ${authenticatorId}`)
}

async function resultText () {
  return ((await page.textContent('#result')) || '').trim()
}

async function openPage (url) {
  if (typeof url !== 'string' || url === '') throw new Error('the command needs a URL string')
  const resp = await page.goto(url, { waitUntil: 'load', timeout: COMMAND_TIMEOUT_MS })
  if (resp && !resp.ok()) log(`GET ${url}: HTTP ${resp.status()}`)
  await page.waitForSelector('body[data-loaded="true"]', { state: 'attached', timeout: COMMAND_TIMEOUT_MS })
}

// Open URL, click the button, wait for a final #result.
async function clickAndWait (url, buttonId) {
  await openPage(url)
  const button = page.locator('#' + buttonId)
  if (await button.isDisabled()) {
    const text = await resultText()
    if (FINAL_RE.test(text)) return { result: text }
    throw new Error(`#${buttonId} is disabled and #result says ${JSON.stringify(text)}`)
  }
  await button.click({ timeout: COMMAND_TIMEOUT_MS })
  try {
    await page.waitForFunction(
      (src) => {
        const el = document.getElementById('result')
        return !!el && new RegExp(src).test(el.textContent || '')
      },
      FINAL_RE.source,
      { timeout: COMMAND_TIMEOUT_MS, polling: 100 }
    )
  } catch (e) {
    throw new Error(`no outcome in #result after clicking #${buttonId} (last text ${JSON.stringify(await resultText())}): ${e.message.split('\n')[0]}`)
  }
  return { result: await resultText() }
}

async function pending (url, user) {
  if (typeof user !== 'string') throw new Error('the pending command needs "user"')
  await openPage(url)
  await page.fill('#user', user)
  await page.click('#signin', { timeout: COMMAND_TIMEOUT_MS })
  try {
    await page.waitForSelector('#result[data-outcome]', { state: 'attached', timeout: COMMAND_TIMEOUT_MS })
  } catch (e) {
    throw new Error(`no outcome in #result after clicking #signin (last text ${JSON.stringify(await resultText())}): ${e.message.split('\n')[0]}`)
  }
  const hrefs = await page.$$eval('#requests a.approve-link', (as) => as.map((a) => a.href))
  return { result: await resultText(), approve_urls: hrefs }
}

async function credentialCount () {
  const r = await cdp.send('WebAuthn.getCredentials', { authenticatorId })
  return { count: r.credentials.length }
}

function withTimeout (promise, ms) {
  let timer
  return Promise.race([
    promise,
    new Promise((resolve, reject) => {
      timer = setTimeout(() => reject(new Error(`command timed out after ${ms / 1000} s`)), ms)
    })
  ]).finally(() => clearTimeout(timer))
}

async function run (cmd) {
  if (cmd === null || typeof cmd !== 'object' || Array.isArray(cmd)) throw new Error('a command is a JSON object')
  if ('enroll' in cmd) return clickAndWait(cmd.enroll, 'enroll')
  if ('approve' in cmd) return clickAndWait(cmd.approve, 'approve')
  if ('deny' in cmd) return clickAndWait(cmd.deny, 'deny')
  if ('pending' in cmd) return pending(cmd.pending, cmd.user)
  if ('credentials' in cmd) return credentialCount()
  throw new Error(`unknown command; keys: ${Object.keys(cmd).join(', ') || '(none)'}`)
}

async function shutdown (code) {
  try {
    if (browser) await browser.close()
  } catch (e) {
    log(`closing the browser: ${e.message}`)
  }
  process.exit(code)
}

async function main () {
  const rl = readline.createInterface({ input: process.stdin, crlfDelay: Infinity, terminal: false })
  const lines = rl[Symbol.asyncIterator]()

  let setupError = null
  try {
    await setup()
  } catch (e) {
    setupError = `starting chromium: ${e.message.split('\n')[0]}`
    log(setupError)
  }

  for (;;) {
    const next = await lines.next()
    if (next.done) break
    const line = next.value.trim()
    if (line === '') continue
    let cmd
    try {
      cmd = JSON.parse(line)
    } catch (e) {
      reply({ error: `not JSON: ${e.message}` })
      continue
    }
    if (cmd && typeof cmd === 'object' && cmd.quit) {
      reply({ quit: true })
      await shutdown(0)
      return
    }
    if (setupError) {
      reply({ error: setupError })
      continue
    }
    consoleErrors = []
    try {
      const out = await withTimeout(run(cmd), COMMAND_TIMEOUT_MS)
      reply(out)
    } catch (e) {
      let msg = e && e.message ? e.message.split('\n')[0] : String(e)
      if (consoleErrors.length) msg += ` | page: ${consoleErrors.join(' | ')}`
      log(`command ${line} failed: ${msg}`)
      reply({ error: msg })
    }
  }
  await shutdown(0)
}

process.on('unhandledRejection', (e) => log(`unhandled: ${e && e.stack ? e.stack : e}`))
main().catch((e) => {
  log(`fatal: ${e && e.stack ? e.stack : e}`)
  reply({ error: `fatal: ${e && e.message ? e.message : e}` })
  process.exit(1)
})
