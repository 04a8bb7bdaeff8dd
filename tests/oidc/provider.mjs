// A real OpenID Connect provider (the `oidc-provider` package) for Parley's single sign-on tests.
//
//   node tests/oidc/provider.mjs PORT CONFIG.json
//
// CONFIG.json: {"clients": [{client_id, client_secret, redirect_uris}], "accounts": {login: {claims}},
// "tamper": "" | "wrong_aud" | "wrong_iss" | "unsigned" | "bad_signature"}. It is read again on every
// login and token request, so a test changes a user's groups (or makes the provider misbehave) between
// two logins by rewriting the file. Any login name signs in (the password is not checked: this is
// the package's development login page); its claims are the file's "accounts" entry for that name.
// Consent is granted without a page, as a first-party provider does. Prints "ready <issuer>" when
// listening.
import crypto from 'node:crypto';
import fs from 'node:fs';

import Provider from 'oidc-provider';

const [port, configPath] = process.argv.slice(2);
const issuer = `http://127.0.0.1:${port}`;
const read = () => JSON.parse(fs.readFileSync(configPath, 'utf8'));

// The signing key: made here so that a "tamper" mode can sign altered tokens with the real key.
const { privateKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
const jwk = { ...privateKey.export({ format: 'jwk' }), kid: 'test-key', use: 'sig', alg: 'RS256' };

const provider = new Provider(issuer, {
  clients: read().clients.map((client) => ({
    grant_types: ['authorization_code'],
    response_types: ['code'],
    token_endpoint_auth_method: 'client_secret_post',
    ...client,
  })),
  jwks: { keys: [jwk] },
  cookies: { keys: ['parley-test-cookie-key'] },
  scopes: ['openid', 'email', 'profile', 'groups'],
  claims: {
    openid: ['sub'],
    email: ['email', 'email_verified'],
    profile: ['name', 'preferred_username'],
    groups: ['groups'],
  },
  pkce: { required: () => true },
  features: { devInteractions: { enabled: true } },
  async findAccount(ctx, id) {
    return {
      accountId: id,
      async claims() {
        const account = read().accounts[id] || {};
        return { sub: id, preferred_username: id, email_verified: true, ...account };
      },
    };
  },
  async loadExistingGrant(ctx) {
    const grantId = ctx.oidc.result?.consent?.grantId || ctx.oidc.session.grantIdFor(ctx.oidc.client.clientId);
    if (grantId) {
      return ctx.oidc.provider.Grant.find(grantId);
    }
    const grant = new ctx.oidc.provider.Grant({
      clientId: ctx.oidc.client.clientId,
      accountId: ctx.oidc.session.accountId,
    });
    grant.addOIDCScope('openid email profile groups');
    await grant.save();
    return grant;
  },
});

const b64url = (value) => Buffer.from(typeof value === 'string' ? value : JSON.stringify(value)).toString('base64url');

// Rewrite the ID token of a token response as the "tamper" mode says: another audience or issuer
// (signed with the real key), no signature at all, or a signature that does not match.
function tampered(idToken, mode) {
  const [header, payload] = idToken.split('.').slice(0, 2).map((part) => JSON.parse(Buffer.from(part, 'base64url')));
  if (mode === 'wrong_aud') payload.aud = 'someone-else';
  if (mode === 'wrong_iss') payload.iss = 'http://127.0.0.1:1/not-the-issuer';
  if (mode === 'unsigned') return `${b64url({ alg: 'none', typ: 'JWT' })}.${b64url(payload)}.`;
  const input = `${b64url(header)}.${b64url(payload)}`;
  const signature = crypto.sign('RSA-SHA256', Buffer.from(input), privateKey).toString('base64url');
  if (mode === 'bad_signature') return `${input}.${signature.slice(0, -4)}AAAA`;
  return `${input}.${signature}`;
}

provider.use(async (ctx, next) => {
  await next();
  const mode = read().tamper;
  if (mode && ctx.path === '/token' && ctx.status === 200 && ctx.body?.id_token) {
    ctx.body = { ...ctx.body, id_token: tampered(ctx.body.id_token, mode) };
  }
});

provider.listen(Number(port), '127.0.0.1', () => {
  console.log(`ready ${issuer}`);
});
