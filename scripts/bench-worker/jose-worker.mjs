// The comparison Worker for scripts/bench: the same checks as edgeauth's Worker, written the way
// a JavaScript team would, with the `jose` library (workerd's native WebCrypto underneath):
// Bearer token, signature against the JWKS (cached in the isolate), typ/iss/aud/exp/nbf with 30 s
// leeway, required sub and jti, a lifetime bound, the KV deny-list reads (the token's jti and
// the user's revoke-all watermark: two reads in parallel, or with KV_READ = "bulk" one bulk read
// of both, as edgeauth's Worker does), identity headers replaced, a JSON log line, then the
// request forwarded upstream.
import { createLocalJWKSet, jwtVerify } from "jose";

let keys;

function deny(status, error) {
  const challenge = error ? `Bearer error="${error}"` : "Bearer";
  return new Response(JSON.stringify({ error: error ?? "unauthorized" }), {
    status,
    headers: { "content-type": "application/json", "www-authenticate": challenge },
  });
}

export default {
  async fetch(request, env) {
    if (!keys) {
      const answer = await fetch(env.JWKS_URL);
      keys = createLocalJWKSet(await answer.json());
    }
    const match = /^Bearer ([A-Za-z0-9._~+/-]+=*)$/.exec(request.headers.get("authorization") ?? "");
    if (!match) return deny(401);
    let payload;
    try {
      ({ payload } = await jwtVerify(match[1], keys, {
        issuer: env.ISSUER,
        audience: env.AUDIENCE,
        algorithms: ["EdDSA", "ES256", "RS256"],
        typ: "at+jwt",
        requiredClaims: ["sub", "jti", "exp"],
        clockTolerance: 30,
        maxTokenAge: "1h",
      }));
    } catch {
      return deny(401, "invalid_token");
    }
    const jtiKey = `jti:${payload.jti}`;
    const userKey = `user:${payload.sub}`;
    let revoked, watermark;
    if (env.KV_READ === "bulk") {
      const values = await env.DENYLIST.get([jtiKey, userKey]);
      [revoked, watermark] = [values.get(jtiKey), values.get(userKey)];
    } else {
      [revoked, watermark] = await Promise.all([env.DENYLIST.get(jtiKey), env.DENYLIST.get(userKey)]);
    }
    if (revoked !== null) return deny(401, "invalid_token");
    if (watermark !== null && !(payload.iat > Number(watermark))) return deny(401, "invalid_token");
    // One structured line per request, as edgeauth's Worker writes.
    console.log(JSON.stringify({ event: "request", verdict: "allow", kid: payload.kid, path: new URL(request.url).pathname }));
    const headers = new Headers(request.headers);
    headers.delete("x-user-id");
    headers.delete("x-user-scope");
    headers.set("x-user-id", payload.sub);
    headers.set("x-user-scope", typeof payload.scope === "string" ? payload.scope : "");
    const url = new URL(request.url);
    return fetch(env.UPSTREAM_URL + url.pathname + url.search, {
      method: request.method,
      headers,
      body: request.body,
    });
  },
};
