// What the Worker and Envoy benchmarks share: keys and one token per algorithm as the origin
// would issue them, and a wrk run against one URL.
import { execFile } from "node:child_process";
import { promisify } from "node:util";
import { SignJWT, exportJWK, generateKeyPair } from "jose";

export const algorithms = ["EdDSA", "ES256", "RS256"];

// A JWKS with one fresh key per algorithm, and a token signed by each (valid for 50 minutes).
export async function issueTokens(issuer, audience) {
  const jwks = { keys: [] };
  const tokens = {};
  const now = Math.floor(Date.now() / 1000);
  for (const alg of algorithms) {
    const { publicKey, privateKey } = await generateKeyPair(alg, { extractable: true });
    const jwk = { ...(await exportJWK(publicKey)), kid: `bench-${alg}`, alg, use: "sig" };
    jwks.keys.push(jwk);
    tokens[alg] = await new SignJWT({ scope: "profile", sid: crypto.randomUUID() })
      .setProtectedHeader({ alg, kid: jwk.kid, typ: "at+jwt" })
      .setIssuer(issuer)
      .setAudience(audience)
      .setSubject(crypto.randomUUID())
      .setJti(crypto.randomUUID())
      .setIssuedAt(now)
      .setExpirationTime(now + 3000)
      .sign(privateKey);
  }
  return { jwks, tokens };
}

// wrk, 1 thread, 8 connections, for `seconds`, with `token` as a bearer token: requests per
// second and the count of non-2xx answers. Asynchronous: a benchmark's Node process may be
// serving part of the runtime (Miniflare's KV) while wrk runs.
export async function wrk(url, token, seconds) {
  const { stdout: output } = await promisify(execFile)(
    "wrk",
    ["-t1", "-c8", `-d${seconds}s`, "-H", `authorization: Bearer ${token}`, url],
    { encoding: "utf8" },
  );
  const rps = Number(/Requests\/sec:\s+([0-9.]+)/.exec(output)?.[1]);
  const errors = /Non-2xx or 3xx responses: (\d+)/.exec(output)?.[1] ?? "0";
  if (!Number.isFinite(rps)) throw new Error(`wrk printed no rate:\n${output}`);
  return { rps, errors: Number(errors) };
}
