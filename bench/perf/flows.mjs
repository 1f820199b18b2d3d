// Browser flows for bench/perf.py, in Node: minting codes and complete logins.
//
//   node flows.mjs '<json>'      prints one JSON line with the results
//
// Modes (the JSON's "mode"):
//   mint-broker  full logins at the broker (authorize -> QQ emulator auto-login ->
//                /qq/callback) stopping at the code; writes "code<TAB>verifier" lines
//   mint-peer    the same at oidc-provider (auth -> interaction -> resumed auth)
//   logins       complete logins for `seconds` with `concurrency` browsers:
//                the broker steps above plus the relying party's POST /token
//   burst        `count` complete logins started at once, each its own browser
//
// Why Node and not wrk: these are multi-step flows with cookies and redirects per
// browser, which wrk's per-thread Lua cannot follow connection by connection; and why
// not Python threads: Node's event loop drives hundreds of concurrent browsers in one
// process at a fraction of the CPU, and the machine has two cores to share.
import { createHash, randomBytes } from 'node:crypto'
import { writeFileSync } from 'node:fs'
import http from 'node:http'

const cfg = JSON.parse(process.argv[2])
const TIMEOUT_MS = (cfg.timeout_s ?? 120) * 1000

const b64url = (buf) => buf.toString('base64url')
const pkce = () => {
  const verifier = b64url(randomBytes(32))
  return { verifier, challenge: b64url(createHash('sha256').update(verifier).digest()) }
}

class Browser {
  // One user agent: its own keep-alive connections and cookies per host.
  constructor () {
    this.agent = new http.Agent({ keepAlive: true, maxSockets: 4 })
    this.jar = new Map() // host -> Map(name -> value)
  }

  clearCookies () { this.jar.clear() }

  close () { this.agent.destroy() }

  request (method, url, { headers = {}, body } = {}) {
    const target = new URL(url)
    const cookies = this.jar.get(target.host)
    const allHeaders = { ...headers }
    if (cookies && cookies.size) {
      allHeaders.Cookie = [...cookies].map(([k, v]) => `${k}=${v}`).join('; ')
    }
    if (body !== undefined) allHeaders['Content-Length'] = Buffer.byteLength(body)
    return new Promise((resolve, reject) => {
      const req = http.request(target, { method, agent: this.agent, headers: allHeaders }, (res) => {
        const chunks = []
        res.on('data', (c) => chunks.push(c))
        res.on('end', () => {
          this.remember(target.host, res.headers['set-cookie'])
          resolve({ status: res.statusCode, headers: res.headers, body: Buffer.concat(chunks).toString() })
        })
        res.on('error', reject)
      })
      req.setTimeout(TIMEOUT_MS, () => req.destroy(new Error(`timeout: ${method} ${target.pathname}`)))
      req.on('error', reject)
      if (body !== undefined) req.write(body)
      req.end()
    })
  }

  remember (host, setCookies) {
    if (!setCookies) return
    let cookies = this.jar.get(host)
    if (!cookies) this.jar.set(host, (cookies = new Map()))
    for (const line of setCookies) {
      const pair = line.split(';', 1)[0]
      const eq = pair.indexOf('=')
      const name = pair.slice(0, eq).trim()
      const value = pair.slice(eq + 1).trim()
      if (/max-age=0|expires=thu, 01 jan 1970/i.test(line) || value === '') cookies.delete(name)
      else cookies.set(name, value)
    }
  }

  async redirect (method, url, options, step) {
    const res = await this.request(method, url, options)
    if (![302, 303].includes(res.status) || !res.headers.location) {
      throw new Error(`${step}: expected a redirect, got ${res.status} ${res.body.slice(0, 200)}`)
    }
    return new URL(res.headers.location, url).toString()
  }
}

const query = (params) => new URLSearchParams(params).toString()

// The same authorization request for both servers: code + PKCE (S256) + state + nonce.
function authorizationRequest (clientId) {
  const { verifier, challenge } = pkce()
  const state = b64url(randomBytes(12))
  const params = {
    response_type: 'code',
    client_id: clientId,
    redirect_uri: cfg.redirect_uri,
    scope: cfg.scope ?? 'openid profile',
    state,
    nonce: b64url(randomBytes(12)),
    code_challenge: challenge,
    code_challenge_method: 'S256',
  }
  return { params, state, verifier }
}

// authorize -> QQ (emulator, auto-login) -> /qq/callback -> code
async function brokerCode (browser, clientId) {
  browser.clearCookies() // a new browser: no broker session, so QQ is asked every time
  const { params, state, verifier } = authorizationRequest(clientId)
  const qq = await browser.redirect('GET', `${cfg.issuer}/authorize?${query(params)}`, {}, 'authorize')
  const callback = await browser.redirect('GET', qq, {}, 'qq authorize')
  const back = await browser.redirect('GET', callback, {}, 'qq callback')
  return { code: codeFrom(back, state), verifier }
}

// oidc-provider: auth -> interaction (logs in and consents, bench/peer/provider.mjs) -> auth
async function peerCode (browser, clientId) {
  browser.clearCookies()
  const { params, state, verifier } = authorizationRequest(clientId)
  let url = await browser.redirect('GET', `${cfg.issuer}/auth?${query(params)}`, {}, 'auth')
  url = await browser.redirect('GET', url, {}, 'interaction')
  const back = await browser.redirect('GET', url, {}, 'resume')
  return { code: codeFrom(back, state), verifier }
}

function codeFrom (location, state) {
  const url = new URL(location)
  if (url.searchParams.get('state') !== state) throw new Error(`state mismatch: ${location}`)
  const code = url.searchParams.get('code')
  if (!code) throw new Error(`no code: ${location}`)
  return code
}

async function redeem (browser, clientId, { code, verifier }) {
  const auth = Buffer.from(`${encodeURIComponent(clientId)}:${encodeURIComponent(cfg.client_secret)}`).toString('base64')
  const body = query({ grant_type: 'authorization_code', code, redirect_uri: cfg.redirect_uri, code_verifier: verifier })
  const res = await browser.request('POST', `${cfg.issuer}/token`, {
    headers: { Authorization: `Basic ${auth}`, 'Content-Type': 'application/x-www-form-urlencoded', Accept: 'application/json' },
    body,
  })
  if (res.status !== 200 || !JSON.parse(res.body).id_token) {
    throw new Error(`token: ${res.status} ${res.body.slice(0, 200)}`)
  }
}

const percentile = (sorted, p) => sorted.length ? sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * p))] : 0

function summary (latencies, errors, elapsedMs, extra = {}) {
  latencies.sort((a, b) => a - b)
  return {
    count: latencies.length,
    errors: errors.length,
    first_errors: errors.slice(0, 5),
    elapsed_s: elapsedMs / 1000,
    rate: latencies.length / (elapsedMs / 1000),
    p50_ms: percentile(latencies, 0.5),
    p99_ms: percentile(latencies, 0.99),
    max_ms: latencies.length ? latencies[latencies.length - 1] : 0,
    ...extra,
  }
}

async function mint (codeFor) {
  const lines = []
  const errors = []
  let next = 0
  const began = performance.now()
  const latencies = []
  const worker = async () => {
    const browser = new Browser()
    while (next < cfg.count) {
      next += 1
      const t = performance.now()
      try {
        const { code, verifier } = await codeFor(browser, cfg.client_id)
        lines.push(`${code}\t${verifier}`)
        latencies.push(performance.now() - t)
      } catch (err) {
        errors.push(String(err.message ?? err))
        if (errors.length > 20) throw err
      }
    }
    browser.close()
  }
  await Promise.all(Array.from({ length: cfg.concurrency }, worker))
  writeFileSync(cfg.out, lines.join('\n') + '\n')
  return summary(latencies, errors, performance.now() - began)
}

// One complete login (authorize -> QQ -> callback -> token): its latency, or its error.
async function timedLogin (browser, latencies, errors) {
  const t = performance.now()
  try {
    await redeem(browser, cfg.client_id, await brokerCode(browser, cfg.client_id))
    latencies.push(performance.now() - t)
  } catch (err) {
    errors.push(String(err.message ?? err))
  }
}

async function logins () {
  const errors = []
  const latencies = []
  const stopAt = performance.now() + cfg.seconds * 1000
  const began = performance.now()
  const worker = async () => {
    const browser = new Browser()
    while (performance.now() < stopAt) {
      await timedLogin(browser, latencies, errors)
    }
    browser.close()
  }
  await Promise.all(Array.from({ length: cfg.concurrency }, worker))
  return summary(latencies, errors, performance.now() - began)
}

async function burst () {
  const errors = []
  const latencies = []
  const began = performance.now()
  await Promise.all(Array.from({ length: cfg.count }, async () => {
    const browser = new Browser()
    await timedLogin(browser, latencies, errors)
    browser.close()
  }))
  return summary(latencies, errors, performance.now() - began)
}

const modes = {
  'mint-broker': () => mint(brokerCode),
  'mint-peer': () => mint(peerCode),
  logins,
  burst,
}

try {
  const result = await modes[cfg.mode]()
  process.stdout.write(JSON.stringify(result) + '\n')
} catch (err) {
  process.stdout.write(JSON.stringify({ fatal: String(err.stack ?? err) }) + '\n')
  process.exit(1)
}
