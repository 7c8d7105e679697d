// What the Worker and Envoy benchmarks share: keys and one token per algorithm as the origin
// would issue them, and a wrk run against one URL.
import { execFile, execFileSync } from "node:child_process";
import { availableParallelism } from "node:os";
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
    if (alg === "ES256") tokens[alg] = lowS(tokens[alg]);
  }
  return { jwks, tokens };
}

// The order of P-256 (FIPS 186-4 D.1.2.3).
const P256_ORDER = 0xffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551n;

// WebCrypto signs with either half of `s`; the edges accept only the low one (as the origin
// signs), so a high-S token is turned into its twin `(r, n - s)`.
function lowS(token) {
  const [header, payload, signature] = token.split(".");
  const bytes = Buffer.from(signature, "base64url");
  const s = BigInt(`0x${bytes.subarray(32).toString("hex")}`);
  if (s <= P256_ORDER / 2n) return token;
  Buffer.from((P256_ORDER - s).toString(16).padStart(64, "0"), "hex").copy(bytes, 32);
  return `${header}.${payload}.${bytes.toString("base64url")}`;
}

// wrk, 1 thread, 8 connections, for `seconds`, with `token` as a bearer token: requests per
// second and the count of non-2xx answers. Asynchronous: a benchmark's Node process may be
// serving part of the runtime (Miniflare's KV) while wrk runs. With `cpu`, wrk runs on that CPU
// alone (see pinServer).
export async function wrk(url, token, seconds, cpu) {
  const command = ["wrk", "-t1", "-c8", `-d${seconds}s`, "-H", `authorization: Bearer ${token}`, url];
  const pinned = cpu === undefined ? command : ["taskset", "-c", String(cpu), ...command];
  const { stdout: output } = await promisify(execFile)(pinned[0], pinned.slice(1), {
    encoding: "utf8",
  });
  const rps = Number(/Requests\/sec:\s+([0-9.]+)/.exec(output)?.[1]);
  const errors = /Non-2xx or 3xx responses: (\d+)/.exec(output)?.[1] ?? "0";
  if (!Number.isFinite(rps)) throw new Error(`wrk printed no rate:\n${output}`);
  return { rps, errors: Number(errors) };
}

// On a machine of two or more CPUs, moves the server process `pid` (every thread) to the last
// CPU and this Node process to the first, and returns the first for wrk: the load generator and
// the server then stop taking turns on one core, which otherwise moves figures by ±10% from run
// to run. Returns undefined (nothing pinned) on one CPU.
export function pinServer(pid) {
  const cpus = availableParallelism();
  if (cpus < 2) return undefined;
  execFileSync("taskset", ["-a", "-p", "-c", String(cpus - 1), String(pid)], { stdio: "ignore" });
  execFileSync("taskset", ["-a", "-p", "-c", "0", String(process.pid)], { stdio: "ignore" });
  return 0;
}
