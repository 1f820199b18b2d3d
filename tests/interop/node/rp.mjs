// A relying party built on panva's openid-client (v6), driven by tests/interop/test_openid_client.py.
//
// openid-client is the strictest RP library in common use: it checks discovery
// (issuer equality), the RFC 9207 `iss` response parameter, PKCE, state, nonce,
// the ID token (signature against the JWKS, iss, aud, exp, iat, and the alg the
// client registered), the userinfo `sub`, and the refreshed ID token the same way.
// Any deviation in the broker makes one of these calls throw.
//
// Protocol with the test (one JSON object per stdout line):
//   1. prints {"authorization_url": ...}
//   2. reads the callback URL (the broker's redirect to REDIRECT_URI) from stdin
//   3. runs the rest of the flow and prints the summary; on any error prints
//      {"error": {...}} and exits 1.
// Configuration comes from the environment: ISSUER, CLIENT_ID, CLIENT_SECRET,
// REDIRECT_URI, POST_LOGOUT_REDIRECT_URI, SCOPE, ID_TOKEN_ALG (the client's registered
// id_token_signed_response_alg; openid-client rejects an ID token signed with any other).
import { createInterface } from 'node:readline'
import * as client from 'openid-client'

const env = (name) => {
  const value = process.env[name]
  if (!value) throw new Error(`${name} is not set`)
  return value
}

const describe = (err) => ({
  name: err?.name,
  message: err?.message,
  code: err?.code,
  error: err?.error,
  error_description: err?.error_description,
  status: err?.status,
  cause: err?.cause === undefined ? undefined : String(err.cause?.message ?? err.cause),
})

// Run `fn`, returning {ok: true, value} or {ok: false, error}: for steps that must fail.
const attempt = async (fn) => {
  try {
    return { ok: true, value: await fn() }
  } catch (err) {
    return { ok: false, error: describe(err) }
  }
}

const readLine = () =>
  new Promise((resolve, reject) => {
    const rl = createInterface({ input: process.stdin })
    rl.once('line', (line) => {
      resolve(line.trim()) // before close(): closing emits 'close', which would reject
      rl.close()
      process.stdin.destroy() // an open stdin pipe would keep node running after the summary
    })
    rl.once('close', () => reject(new Error('stdin closed before the callback URL arrived')))
  })

const print = (obj) => process.stdout.write(`${JSON.stringify(obj)}\n`)

async function main() {
  const issuer = env('ISSUER')
  const clientId = env('CLIENT_ID')
  const clientSecret = env('CLIENT_SECRET')
  const redirectUri = env('REDIRECT_URI')
  const postLogoutRedirectUri = env('POST_LOGOUT_REDIRECT_URI')
  const scope = process.env.SCOPE || 'openid profile offline_access'
  const idTokenAlg = process.env.ID_TOKEN_ALG || 'RS256'

  // The test broker listens on loopback http://; v6 refuses http:// unless told.
  const config = await client.discovery(
    new URL(issuer),
    clientId,
    { client_secret: clientSecret, id_token_signed_response_alg: idTokenAlg },
    client.ClientSecretBasic(clientSecret),
    { execute: [client.allowInsecureRequests] },
  )
  const metadata = config.serverMetadata()

  const codeVerifier = client.randomPKCECodeVerifier()
  const codeChallenge = await client.calculatePKCECodeChallenge(codeVerifier)
  const state = client.randomState()
  const nonce = client.randomNonce()
  const authorizationUrl = client.buildAuthorizationUrl(config, {
    redirect_uri: redirectUri,
    scope,
    code_challenge: codeChallenge,
    code_challenge_method: 'S256',
    state,
    nonce,
  })
  print({ authorization_url: authorizationUrl.href })

  const callbackUrl = new URL(await readLine())
  const tokens = await client.authorizationCodeGrant(config, callbackUrl, {
    pkceCodeVerifier: codeVerifier,
    expectedState: state,
    expectedNonce: nonce,
    idTokenExpected: true,
  })
  const claims = tokens.claims()
  const userinfo = await client.fetchUserInfo(config, tokens.access_token, claims.sub)

  // Refresh: openid-client validates the refreshed ID token like the first one; the test
  // compares its `sub`, and fetchUserInfo insists on the original `sub`.
  const refreshed = await client.refreshTokenGrant(config, tokens.refresh_token)
  const refreshedClaims = refreshed.id_token ? refreshed.claims() : null
  const refreshedUserinfo = await client.fetchUserInfo(config, refreshed.access_token, claims.sub)
  const currentRefresh = refreshed.refresh_token ?? tokens.refresh_token

  // Revocation (RFC 7009), then proof that it took: introspection and a refused refresh.
  await client.tokenRevocation(config, currentRefresh, { token_type_hint: 'refresh_token' })
  const introspected = await client.tokenIntrospection(config, currentRefresh, {
    token_type_hint: 'refresh_token',
  })
  const refreshAfterRevocation = await attempt(() =>
    client.refreshTokenGrant(config, currentRefresh),
  )

  const logoutState = client.randomState()
  const endSessionUrl = client.buildEndSessionUrl(config, {
    id_token_hint: tokens.id_token,
    post_logout_redirect_uri: postLogoutRedirectUri,
    state: logoutState,
  })

  print({
    discovery: {
      issuer: metadata.issuer,
      end_session_endpoint: metadata.end_session_endpoint,
      revocation_endpoint: metadata.revocation_endpoint,
    },
    state,
    nonce,
    token_type: tokens.token_type,
    scope: tokens.scope,
    has_refresh_token: typeof tokens.refresh_token === 'string',
    id_token_alg: JSON.parse(Buffer.from(tokens.id_token.split('.')[0], 'base64url')).alg,
    claims,
    userinfo,
    refresh: {
      has_access_token: typeof refreshed.access_token === 'string',
      access_token_changed: refreshed.access_token !== tokens.access_token,
      rotated: refreshed.refresh_token !== undefined && refreshed.refresh_token !== tokens.refresh_token,
      claims: refreshedClaims,
      userinfo: refreshedUserinfo,
    },
    revocation: {
      revoked: true,
      introspection_active: introspected.active,
      refresh_after_revocation: refreshAfterRevocation.ok
        ? { ok: true }
        : { ok: false, error: refreshAfterRevocation.error },
    },
    logout: { end_session_url: endSessionUrl.href, state: logoutState },
  })
}

main().catch((err) => {
  print({ error: describe(err) })
  process.exit(1)
})
