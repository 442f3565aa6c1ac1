// pgstepup's browser side: the approval, enrollment and pending-requests pages.
//
// One file for all three pages, because the server sends
// `Content-Security-Policy: default-src 'self'` (no inline script) and serves
// only /assets/webauthn.js and /assets/style.css besides the pages. Each page
// names itself in <body data-page="...">; the code for that page runs on load.
//
// Server data (statements, user names, messages) is attacker-influenced: it is
// only ever shown with textContent, never parsed as HTML.
//
// Wire format: the JSON of webauthn-rs 0.6 (webauthn-rs-proto). Binary fields
// are base64url without padding both ways.
//
// Every page marks <body data-loaded="true"> once its initial request is done,
// and while an action runs #result has no data-outcome attribute; when the
// action ends, #result gets data-outcome="<word>" and text starting with the
// word: approved, denied, expired, cancelled, enrolled, invalid, error, or
// signed-in (pending page). Progress texts never contain those words.
'use strict'

// ---------------------------------------------------------------------------
// Encoding helpers

/** base64url (padded or not) -> ArrayBuffer */
function b64urlToBuffer (s) {
  if (typeof s !== 'string') throw new TypeError('expected a base64url string')
  let b64 = s.replace(/-/g, '+').replace(/_/g, '/').replace(/=+$/, '')
  while (b64.length % 4 !== 0) b64 += '='
  const bin = atob(b64)
  const bytes = new Uint8Array(bin.length)
  for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i)
  return bytes.buffer
}

/** ArrayBuffer / TypedArray / DataView -> base64url without padding */
function bufferToB64url (buf) {
  const bytes = buf instanceof ArrayBuffer
    ? new Uint8Array(buf)
    : new Uint8Array(buf.buffer, buf.byteOffset, buf.byteLength)
  let bin = ''
  for (let i = 0; i < bytes.length; i += 0x8000) {
    bin += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000))
  }
  return btoa(bin).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '')
}

function decodeDescriptors (list) {
  if (!Array.isArray(list)) return list
  return list.map(function (d) {
    const out = Object.assign({}, d)
    out.id = b64urlToBuffer(d.id)
    return out
  })
}

/**
 * Server reply {publicKey: {...}, mediation?} (webauthn-rs CreationChallengeResponse)
 * -> argument for navigator.credentials.create(). Only publicKey is used; other
 * top-level keys (mediation) are dropped. Fields of publicKey pass through,
 * with challenge, user.id and excludeCredentials[].id decoded.
 */
function creationOptionsFromServer (reply) {
  if (!reply || typeof reply.publicKey !== 'object' || reply.publicKey === null) {
    throw new Error('server reply has no publicKey options')
  }
  const pk = Object.assign({}, reply.publicKey)
  pk.challenge = b64urlToBuffer(pk.challenge)
  pk.user = Object.assign({}, pk.user)
  pk.user.id = b64urlToBuffer(pk.user.id)
  if (pk.excludeCredentials) pk.excludeCredentials = decodeDescriptors(pk.excludeCredentials)
  return { publicKey: pk }
}

/**
 * Server reply {publicKey: {...}, mediation?} (webauthn-rs RequestChallengeResponse)
 * -> argument for navigator.credentials.get(). mediation is dropped; challenge
 * and allowCredentials[].id are decoded; the rest passes through.
 */
function requestOptionsFromServer (reply) {
  if (!reply || typeof reply.publicKey !== 'object' || reply.publicKey === null) {
    throw new Error('server reply has no publicKey options')
  }
  const pk = Object.assign({}, reply.publicKey)
  pk.challenge = b64urlToBuffer(pk.challenge)
  if (pk.allowCredentials) pk.allowCredentials = decodeDescriptors(pk.allowCredentials)
  return { publicKey: pk }
}

// Client extension outputs webauthn-rs can deserialise; anything else (or of an
// unexpected type) is left out so the server never rejects the whole body.
function assertionExtensions (cred) {
  const out = {}
  let ext = {}
  try { ext = cred.getClientExtensionResults() || {} } catch (e) { ext = {} }
  if (typeof ext.appid === 'boolean') out.appid = ext.appid
  return out
}

function registrationExtensions (cred) {
  const out = {}
  let ext = {}
  try { ext = cred.getClientExtensionResults() || {} } catch (e) { ext = {} }
  if (typeof ext.appid === 'boolean') out.appid = ext.appid
  if (ext.credProps && typeof ext.credProps === 'object') {
    out.credProps = typeof ext.credProps.rk === 'boolean' ? { rk: ext.credProps.rk } : {}
  }
  if (typeof ext.minPinLength === 'number') out.minPinLength = ext.minPinLength
  return out
}

/** PublicKeyCredential from credentials.get() -> webauthn-rs PublicKeyCredential JSON */
function assertionToJSON (cred) {
  const r = cred.response
  return {
    id: cred.id,
    rawId: bufferToB64url(cred.rawId),
    type: cred.type,
    response: {
      authenticatorData: bufferToB64url(r.authenticatorData),
      clientDataJSON: bufferToB64url(r.clientDataJSON),
      signature: bufferToB64url(r.signature),
      userHandle: r.userHandle && r.userHandle.byteLength > 0 ? bufferToB64url(r.userHandle) : null
    },
    extensions: assertionExtensions(cred)
  }
}

/** PublicKeyCredential from credentials.create() -> webauthn-rs RegisterPublicKeyCredential JSON */
function attestationToJSON (cred) {
  const r = cred.response
  const response = {
    attestationObject: bufferToB64url(r.attestationObject),
    clientDataJSON: bufferToB64url(r.clientDataJSON)
  }
  if (typeof r.getTransports === 'function') {
    try {
      const t = r.getTransports()
      if (Array.isArray(t)) response.transports = t
    } catch (e) { /* optional */ }
  }
  return {
    id: cred.id,
    rawId: bufferToB64url(cred.rawId),
    type: cred.type,
    response: response,
    extensions: registrationExtensions(cred)
  }
}

// ---------------------------------------------------------------------------
// Server calls

/** An error with the server's (or our) outcome word: invalid, expired, denied, error. */
class Outcome extends Error {
  constructor (word, message) {
    super(message)
    this.word = word
  }
}

const RESULT_WORDS = ['invalid', 'expired', 'denied', 'error']

async function api (method, path, body) {
  const init = {
    method: method,
    credentials: 'same-origin',
    cache: 'no-store',
    headers: { Accept: 'application/json' }
  }
  if (body !== undefined) {
    init.headers['Content-Type'] = 'application/json'
    init.body = JSON.stringify(body)
  }
  let resp
  try {
    resp = await fetch(path, init)
  } catch (e) {
    throw new Outcome('error', 'could not reach the server: ' + e.message)
  }
  let data = null
  try {
    data = await resp.json()
  } catch (e) {
    data = null
  }
  if (!resp.ok) {
    const word = data && RESULT_WORDS.indexOf(data.result) >= 0 ? data.result : 'error'
    const msg = data && typeof data.message === 'string' ? data.message : 'HTTP ' + resp.status
    throw new Outcome(word, msg)
  }
  if (data === null || typeof data !== 'object') {
    throw new Outcome('error', 'the server sent no JSON (HTTP ' + resp.status + ')')
  }
  return data
}

/** Run a browser WebAuthn call; its failures (cancel, timeout, no key) become "invalid". */
async function ceremony (fn) {
  if (!window.PublicKeyCredential || !navigator.credentials) {
    throw new Outcome('invalid', 'this browser does not offer WebAuthn here (it needs HTTPS or localhost)')
  }
  try {
    const cred = await fn()
    if (!cred) throw new Error('the browser returned no credential')
    return cred
  } catch (e) {
    const name = e && e.name ? e.name : 'Error'
    const msg = e && e.message ? e.message : String(e)
    throw new Outcome('invalid', name + ': ' + msg)
  }
}

async function getAssertion (optionsReply) {
  const opts = requestOptionsFromServer(optionsReply)
  const cred = await ceremony(function () { return navigator.credentials.get(opts) })
  return assertionToJSON(cred)
}

async function createCredential (optionsReply) {
  const opts = creationOptionsFromServer(optionsReply)
  const cred = await ceremony(function () { return navigator.credentials.create(opts) })
  return attestationToJSON(cred)
}

// ---------------------------------------------------------------------------
// Page helpers

function $ (id) { return document.getElementById(id) }

function setText (id, value) {
  const el = $(id)
  if (el) el.textContent = value === undefined || value === null || value === '' ? '—' : String(value)
}

/** Last non-empty path segment, re-encoded so it is safe inside an API path. */
function tokenFromPath () {
  const segs = location.pathname.split('/').filter(function (s) { return s !== '' })
  const last = segs.length ? segs[segs.length - 1] : ''
  try {
    return encodeURIComponent(decodeURIComponent(last))
  } catch (e) {
    return encodeURIComponent(last)
  }
}

function formatTime (unix) {
  if (typeof unix !== 'number' || !isFinite(unix)) return '—'
  return new Date(unix * 1000).toLocaleString()
}

function formatDuration (secs) {
  secs = Math.max(0, Math.floor(secs))
  const m = Math.floor(secs / 60)
  const s = secs % 60
  return m + ':' + (s < 10 ? '0' : '') + s
}

/** Show progress: clears the outcome marker. Progress text never contains an outcome word. */
function showProgress (text) {
  const el = $('result')
  el.removeAttribute('data-outcome')
  el.className = 'result busy'
  el.textContent = text
}

/** Show a final or failed outcome: "<word>: <message>". */
function showOutcome (word, message) {
  const el = $('result')
  el.textContent = message ? word + ': ' + message : word
  el.className = 'result outcome-' + word
  el.setAttribute('data-outcome', word)
}

function showError (e) {
  if (e instanceof Outcome) showOutcome(e.word, e.message)
  else showOutcome('error', e && e.message ? e.message : String(e))
}

function setDisabled (ids, disabled) {
  ids.forEach(function (id) {
    const el = $(id)
    if (el) el.disabled = disabled
  })
}

function markLoaded () {
  document.body.setAttribute('data-loaded', 'true')
}

const STATUS_TEXT = {
  approved: 'this request was already approved',
  denied: 'this request was denied',
  expired: 'this request expired before anyone approved it',
  cancelled: 'the client session that sent this statement has ended'
}

// ---------------------------------------------------------------------------
// approve.html

function initApprove () {
  const token = tokenFromPath()
  const base = '/api/approve/' + token
  const buttons = ['approve', 'deny']
  let final = false
  let busy = false
  let deadline = null // performance.now() ms at which the request expires
  let timer = null

  function finish (word, message) {
    final = true
    setDisabled(buttons, true)
    showOutcome(word, message)
    if (timer) { clearInterval(timer); timer = null }
  }

  function tick () {
    if (deadline === null) return
    const left = (deadline - performance.now()) / 1000
    setText('time-left', left > 0 ? formatDuration(left) : 'none')
    if (left <= 0 && !final) {
      if (busy) return // the server's answer to the running ceremony decides
      finish('expired', 'the time to approve this statement has run out')
    }
  }

  async function act (kind) {
    if (final || busy) return
    busy = true
    setDisabled(buttons, true)
    try {
      let reply
      if (kind === 'approve') {
        showProgress('Asking the server for a challenge…')
        const opts = await api('POST', base + '/begin', {})
        showProgress('Confirm with your security key or passkey…')
        const assertion = await getAssertion(opts)
        showProgress('Checking your signature…')
        reply = await api('POST', base + '/finish', assertion)
      } else {
        showProgress('Sending your refusal…')
        reply = await api('POST', base + '/deny', {})
      }
      const word = typeof reply.result === 'string' ? reply.result : (kind === 'approve' ? 'approved' : 'denied')
      let msg = typeof reply.message === 'string' ? reply.message : ''
      if (typeof reply.elevated_until === 'number') {
        msg += (msg ? ' ' : '') + '(step-up valid until ' + formatTime(reply.elevated_until) + ')'
      }
      finish(word, msg)
    } catch (e) {
      if (e instanceof Outcome && (e.word === 'expired' || e.word === 'denied')) {
        finish(e.word, e.message)
      } else {
        // invalid/error: the user may try again while time is left
        showError(e)
        const expired = deadline !== null && deadline <= performance.now()
        if (expired) finish('expired', 'the time to approve this statement has run out')
        else setDisabled(buttons, false)
      }
    } finally {
      busy = false
    }
  }

  $('approve').addEventListener('click', function () { act('approve') })
  $('deny').addEventListener('click', function () { act('deny') })

  ;(async function load () {
    setDisabled(buttons, true)
    showProgress('Loading the request…')
    try {
      const req = await api('GET', base)
      setText('user', req.user)
      setText('statement', req.statement)
      setText('rule', req.rule)
      setText('reason', req.reason)
      setText('client', req.client_addr)
      setText('application', req.application_name)
      setText('created', formatTime(req.created_at))
      setText('expires', formatTime(req.expires_at))
      if (req.status !== 'pending') {
        setText('time-left', 'none')
        // A cancelled statement can no longer be approved: for the reader, it has expired.
        const word = req.status === 'cancelled' ? 'expired' : (STATUS_TEXT[req.status] ? req.status : 'invalid')
        finish(word, STATUS_TEXT[req.status] || 'unknown request status ' + JSON.stringify(req.status))
        return
      }
      const secs = typeof req.seconds_left === 'number' ? req.seconds_left : 0
      deadline = performance.now() + secs * 1000
      $('result').textContent = ''
      $('result').className = 'result'
      tick()
      if (!final) {
        setDisabled(buttons, false)
        timer = setInterval(tick, 1000)
      }
    } catch (e) {
      if (e instanceof Outcome) finish(e.word, e.message)
      else finish('error', e.message)
    } finally {
      markLoaded()
    }
  })()
}

// ---------------------------------------------------------------------------
// enroll.html

function initEnroll () {
  const token = tokenFromPath()
  const base = '/api/enroll/' + token
  let final = false
  let busy = false

  function finish (word, message) {
    final = true
    setDisabled(['enroll'], true)
    showOutcome(word, message)
  }

  async function enroll () {
    if (final || busy) return
    busy = true
    setDisabled(['enroll'], true)
    try {
      showProgress('Asking the server for a challenge…')
      let opts = await api('POST', base + '/begin', {})
      if (opts.step === 'authenticate') {
        showProgress('First confirm with a key you registered before…')
        const assertion = await getAssertion(opts)
        showProgress('Checking your signature…')
        opts = await api('POST', base + '/authenticate', assertion)
      }
      if (opts.step !== undefined && opts.step !== 'register') {
        throw new Outcome('error', 'unexpected step from the server: ' + JSON.stringify(opts.step))
      }
      showProgress('Create the new passkey or touch your security key…')
      const credential = await createCredential(opts)
      showProgress('Saving your key…')
      const reply = await api('POST', base + '/finish', credential)
      const word = typeof reply.result === 'string' ? reply.result : 'enrolled'
      const msg = typeof reply.credential_id === 'string' ? 'key saved (credential ' + reply.credential_id + ')' : 'key saved'
      finish(word, msg)
    } catch (e) {
      if (e instanceof Outcome && (e.word === 'expired' || e.word === 'denied')) {
        finish(e.word, e.message)
      } else {
        showError(e)
        setDisabled(['enroll'], false)
      }
    } finally {
      busy = false
    }
  }

  $('enroll').addEventListener('click', enroll)

  ;(async function load () {
    setDisabled(['enroll'], true)
    showProgress('Loading…')
    try {
      const info = await api('GET', base)
      setText('user', info.user)
      setText('expires', formatTime(info.expires_at))
      const note = $('has-keys')
      if (note) note.hidden = !info.has_keys
      $('result').textContent = ''
      $('result').className = 'result'
      setDisabled(['enroll'], false)
    } catch (e) {
      if (e instanceof Outcome) finish(e.word, e.message)
      else finish('error', e.message)
    } finally {
      markLoaded()
    }
  })()
}

// ---------------------------------------------------------------------------
// pending.html

function renderRequests (list) {
  const box = $('requests')
  box.textContent = ''
  if (list.length === 0) {
    const p = document.createElement('p')
    p.className = 'empty'
    p.textContent = 'No requests.'
    box.appendChild(p)
    return
  }
  const ul = document.createElement('ul')
  ul.className = 'request-list'
  list.forEach(function (r) {
    const li = document.createElement('li')
    li.className = 'request status-' + String(r.status).replace(/[^a-z]/g, '')

    const pre = document.createElement('pre')
    pre.className = 'statement'
    pre.textContent = r.statement === undefined || r.statement === null ? '' : String(r.statement)
    li.appendChild(pre)

    const dl = document.createElement('dl')
    ;[
      ['Rule', r.rule],
      ['Status', r.status],
      ['Created', formatTime(r.created_at)],
      ['Expires', formatTime(r.expires_at)]
    ].forEach(function (pair) {
      const dt = document.createElement('dt')
      dt.textContent = pair[0]
      const dd = document.createElement('dd')
      dd.textContent = pair[1] === undefined || pair[1] === null ? '—' : String(pair[1])
      dl.appendChild(dt)
      dl.appendChild(dd)
    })
    li.appendChild(dl)

    if (typeof r.approve_url === 'string' && r.approve_url !== '') {
      let url = null
      try { url = new URL(r.approve_url, location.href) } catch (e) { url = null }
      if (url && (url.protocol === 'https:' || url.protocol === 'http:')) {
        const a = document.createElement('a')
        a.className = 'approve-link'
        a.href = url.href
        a.textContent = 'Review and approve'
        li.appendChild(a)
      }
    }
    ul.appendChild(li)
  })
  box.appendChild(ul)
}

function initPending () {
  let busy = false
  const form = $('signin-form')

  async function signin (ev) {
    if (ev) ev.preventDefault()
    if (busy) return
    const user = $('user').value.trim()
    if (user === '') {
      showOutcome('invalid', 'enter your database user name')
      $('user').focus()
      return
    }
    busy = true
    setDisabled(['signin'], true)
    $('requests').textContent = ''
    try {
      showProgress('Asking the server for a challenge…')
      const opts = await api('POST', '/api/pending/begin', { user: user })
      showProgress('Confirm with your security key or passkey…')
      const assertion = await getAssertion(opts)
      showProgress('Checking your signature…')
      const reply = await api('POST', '/api/pending/finish', { user: user, credential: assertion })
      const list = Array.isArray(reply.requests) ? reply.requests : []
      renderRequests(list)
      showOutcome('signed-in', 'as ' + user + ', ' + list.length + (list.length === 1 ? ' request' : ' requests'))
    } catch (e) {
      showError(e)
    } finally {
      busy = false
      setDisabled(['signin'], false)
    }
  }

  if (form) form.addEventListener('submit', signin)
  else $('signin').addEventListener('click', signin)

  const q = new URLSearchParams(location.search).get('user')
  if (q) $('user').value = q
  setDisabled(['signin'], false)
  markLoaded()
}

// ---------------------------------------------------------------------------

const PAGES = { approve: initApprove, enroll: initEnroll, pending: initPending }

function start () {
  const init = PAGES[document.body.getAttribute('data-page')]
  if (init) init()
}

if (typeof window !== 'undefined' && typeof document !== 'undefined') {
  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', start)
  else start()
}
