// The peer of bench/perf.py: panva's oidc-provider, configured like the broker's benchmark.
//
//   node provider.mjs '{"port": 8100, "secret": "...", "redirect_uri": "...", "algs": ["RS256"]}'
//
// One confidential client per algorithm ("rp-rs256", "rp-es256", "rp-eddsa"), each with
// client_secret_basic and its id_token_signed_response_alg; a fresh signing key per
// algorithm (RSA 2048, P-256, Ed25519), as the broker generates on first start. PKCE is
// required (the library's default), as the benchmark's relying party always sends it.
//
// Logging in: devInteractions are disabled. GET /interaction/:uid stands in for a login
// page: it logs the user in, records the consent as a Grant (the library's interaction
// API, as an application would after its own login form) and redirects back to the
// authorization endpoint, which issues the code. So codes are minted by real
// authorization requests and redeemed at the real token endpoint.
//
// Storage: the library's in-memory adapter, over a plain Map instead of its LRU of 1000
// entries, which would evict codes minted ahead of the measured window. In memory is
// the peer's best case (no database round trip at all) and is why it runs as one
// process: cluster workers would not share codes.
import { generateKeyPairSync, randomUUID } from 'node:crypto'
import http from 'node:http'
import Provider from 'oidc-provider'
import MemoryAdapter from 'oidc-provider/lib/adapters/memory_adapter.js'

const cfg = JSON.parse(process.argv[2])
const issuer = `http://127.0.0.1:${cfg.port}`
const USER = 'zhangsan'

class MapStore {
  #entries = new Map()

  get (key) {
    const entry = this.#entries.get(key)
    if (entry === undefined) return undefined
    if (entry.expiresAt !== undefined && entry.expiresAt <= Date.now()) {
      this.#entries.delete(key)
      return undefined
    }
    return entry.value
  }

  set (key, value, options) {
    const expiresAt = options?.maxAge ? Date.now() + options.maxAge : undefined
    this.#entries.set(key, { value, expiresAt })
  }

  delete (key) { this.#entries.delete(key) }
}
const store = new MapStore()

const CLIENT_FOR_ALG = { RS256: 'rp-rs256', ES256: 'rp-es256', EdDSA: 'rp-eddsa' }

function signingKey (alg) {
  const { privateKey } = alg === 'RS256'
    ? generateKeyPairSync('rsa', { modulusLength: 2048 })
    : alg === 'ES256'
      ? generateKeyPairSync('ec', { namedCurve: 'P-256' })
      : generateKeyPairSync('ed25519')
  return { ...privateKey.export({ format: 'jwk' }), alg, use: 'sig', kid: randomUUID() }
}

const algs = cfg.algs ?? ['RS256']
const provider = new Provider(issuer, {
  adapter: (model) => new MemoryAdapter(model, store),
  clients: algs.map((alg) => ({
    client_id: CLIENT_FOR_ALG[alg],
    client_secret: cfg.secret,
    redirect_uris: [cfg.redirect_uri],
    grant_types: ['authorization_code'],
    response_types: ['code'],
    token_endpoint_auth_method: 'client_secret_basic',
    id_token_signed_response_alg: alg,
  })),
  jwks: { keys: algs.map(signingKey) },
  cookies: { keys: [randomUUID()] },
  features: { devInteractions: { enabled: false } },
  interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
  findAccount: (ctx, sub) => ({
    accountId: sub,
    claims: () => ({ sub, name: '张三', nickname: '张三', picture: 'https://thirdqq.qlogo.cn/ek_qqapp/0/100' }),
  }),
  claims: { openid: ['sub'], profile: ['name', 'nickname', 'picture'] },
  ttl: {
    AccessToken: 3600,
    AuthorizationCode: 600,
    IdToken: 3600,
    Interaction: 600,
    Session: 86400,
    Grant: 86400,
  },
  enabledJWA: { idTokenSigningAlgValues: ['RS256', 'ES256', 'EdDSA'] },
})

if (process.env.PEER_DEBUG) {
  provider.on('grant.error', (ctx, err) => process.stdout.write(`grant.error ${err.error_detail ?? err.message}\n`))
}

// The login page stand-in (see the header comment).
provider.use(async (ctx, next) => {
  const match = /^\/interaction\/([^/]+)$/.exec(ctx.path)
  if (!match || ctx.method !== 'GET') return next()
  const { params } = await provider.interactionDetails(ctx.req, ctx.res)
  const grant = new provider.Grant({ accountId: USER, clientId: params.client_id })
  grant.addOIDCScope(params.scope)
  const grantId = await grant.save()
  const returnTo = await provider.interactionResult(
    ctx.req, ctx.res,
    { login: { accountId: USER }, consent: { grantId } },
    { mergeWithLastSubmission: false },
  )
  ctx.status = 303
  ctx.redirect(returnTo)
})

const server = http.createServer(provider.callback())
server.keepAliveTimeout = 120_000
server.listen(cfg.port, '127.0.0.1', () => {
  process.stdout.write(`oidc-provider ${issuer} (${algs.join(', ')})\n`)
})
for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => process.exit(0)) // nothing to flush: all state is in memory
}
