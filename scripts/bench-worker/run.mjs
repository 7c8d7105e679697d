// The Worker benchmark (scripts/bench worker): edgeauth's Worker and a JavaScript Worker using
// `jose`, side by side in one workerd (started by Miniflare, each Worker on a direct socket, so
// requests go straight into workerd without wrangler's proxy), driven by wrk.
//
//   node scripts/bench-worker/run.mjs <out.md> <seconds per Worker and algorithm>
//
// For each of EdDSA, ES256 and RS256 it measures requests per second of:
// - edgeauth, same work as jose: verified-token cache off and the deny-list read from KV on every
//   request, exactly what the jose Workers do;
// - edgeauth as deployed: the default policy (verified-token cache) and a 5 s isolate memory of
//   KV answers;
// - the jose Worker, reading the two deny-list keys the usual way (two reads in parallel), and
//   the same Worker with one bulk read, as edgeauth reads them.
// All four forward to the same upstream Worker. It also reports the bundle size and the time V8
// takes to compile and instantiate the Wasm module.
import { readFileSync, writeFileSync } from "node:fs";
import { gzipSync } from "node:zlib";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { build } from "esbuild";
import { Miniflare } from "miniflare";
import { execFileSync } from "node:child_process";
import { algorithms, issueTokens, pinServer, wrk } from "../bench-common.mjs";

const [out, secondsArg] = process.argv.slice(2);
const seconds = Number(secondsArg ?? 5);
const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
const buildDir = path.join(root, "verifier/worker/build");
const ISSUER = "https://auth.bench.test";
const AUDIENCE = "api.bench.test";

// Keys and one token per algorithm, as the origin would issue them.
const { jwks, tokens } = await issueTokens(ISSUER, AUDIENCE);

const joseBundle = await build({
  entryPoints: [path.join(root, "scripts/bench-worker/jose-worker.mjs")],
  bundle: true,
  format: "esm",
  platform: "neutral",
  write: false,
  minify: true,
  mainFields: ["module", "main"],
  conditions: ["worker", "browser"],
});

const policy = (extra) =>
  JSON.stringify({ issuers: [ISSUER], audiences: [AUDIENCE], ...extra });
const common = {
  compatibilityDate: "2026-04-01",
  kvNamespaces: ["DENYLIST"],
  outboundService: "upstream",
};
const edgeauth = (name, extra, vars) => ({
  ...common,
  name,
  modules: true,
  scriptPath: path.join(buildDir, "index.js"),
  modulesRules: [{ type: "CompiledWasm", include: ["**/*.wasm"] }],
  bindings: {
    POLICY: policy(extra),
    JWKS_URL: "http://upstream/.well-known/jwks.json",
    FEED_URL: "http://upstream/v1/revocations",
    UPSTREAM_URL: "http://upstream",
    ...vars,
  },
  unsafeDirectSockets: [{ host: "127.0.0.1", port: 0 }],
});
const joseWorker = (name, kvRead) => ({
  ...common,
  name,
  modules: true,
  script: joseBundle.outputFiles[0].text,
  bindings: {
    JWKS_URL: "http://upstream/.well-known/jwks.json",
    UPSTREAM_URL: "http://upstream",
    ISSUER,
    AUDIENCE,
    KV_READ: kvRead,
  },
  unsafeDirectSockets: [{ host: "127.0.0.1", port: 0 }],
});
const upstreamWorker = {
  name: "upstream",
  compatibilityDate: "2026-04-01",
  modules: true,
  scriptPath: path.join(root, "scripts/bench-worker/upstream-worker.mjs"),
  bindings: { JWKS: JSON.stringify(jwks) },
};
const mf = new Miniflare({
  // Both Workers log a JSON line per request; the lines are drained, not printed, so the terminal
  // is not what gets measured.
  handleRuntimeStdio(stdout, stderr) {
    stdout.resume();
    stderr.resume();
  },
  workers: [
    edgeauth("edgeauth-same-work", { cache: { max_entries: 0 } }, { DENY_CACHE_SECONDS: "0" }),
    edgeauth("edgeauth-deployed", {}, {}),
    joseWorker("jose", "each"),
    joseWorker("jose-bulk", "bulk"),
    upstreamWorker,
  ],
});
await mf.ready;

const variants = ["edgeauth-same-work", "edgeauth-deployed", "jose", "jose-bulk"];
const urls = {};
for (const name of variants) urls[name] = (await mf.unsafeGetDirectURL(name)).href;

// A benchmark of refusals would measure nothing useful: every pairing must answer 200 first.
for (const name of variants) {
  for (const alg of algorithms) {
    const answer = await fetch(urls[name] + "orders", {
      headers: { authorization: `Bearer ${tokens[alg]}` },
    });
    if (answer.status !== 200) {
      throw new Error(`${name} answered ${answer.status} for ${alg}: ${await answer.text()}`);
    }
  }
}

// workerd on one CPU, wrk on another (bench-common.mjs: pinServer).
const workerd = execFileSync("pgrep", ["-P", String(process.pid), "-f", "workerd"], { encoding: "utf8" })
  .trim()
  .split("\n")[0];
const wrkCpu = pinServer(workerd);

// Per algorithm, ROUNDS rounds of every variant in turn (the order reversed every other round),
// each run a ROUNDS-th of `seconds`; a variant's figure is the median of its rounds. Drift on a
// shared machine then touches every variant alike, and one disturbed run moves no figure.
const ROUNDS = 5;
const runSeconds = Math.max(1, Math.round(seconds / ROUNDS));
const median = (xs) => xs.slice().sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const results = {};
for (const alg of algorithms) {
  const runs = Object.fromEntries(variants.map((name) => [name, []]));
  for (let round = 0; round < ROUNDS; round++) {
    for (const name of round % 2 ? variants.slice().reverse() : variants) {
      process.stderr.write(`${name} ${alg} round ${round + 1} ...\n`);
      runs[name].push(await wrk(urls[name] + "orders", tokens[alg], runSeconds, wrkCpu));
    }
  }
  results[alg] = Object.fromEntries(
    variants.map((name) => [
      name,
      {
        rps: median(runs[name].map((run) => run.rps)),
        errors: runs[name].reduce((sum, run) => sum + run.errors, 0),
      },
    ]),
  );
}
await mf.dispose();

// Start-up cost: a fresh workerd with one Worker (and the upstream), timed from start to that
// Worker's first answer (JWKS fetch included). workerd compiles the Wasm module at start and
// instantiates it on first use, so the difference from jose is the module's cost. (Node 20's V8
// cannot compile this module on its own: it uses Wasm exception handling, which workerd's newer
// V8 has.)
const wasm = readFileSync(path.join(buildDir, "index_bg.wasm"));
const js = readFileSync(path.join(buildDir, "index.js"));
async function coldStart(worker) {
  const started = performance.now();
  const cold = new Miniflare({
    handleRuntimeStdio(stdout, stderr) {
      stdout.resume();
      stderr.resume();
    },
    workers: [worker, upstreamWorker],
  });
  await cold.ready;
  const url = (await cold.unsafeGetDirectURL(worker.name)).href;
  const answer = await fetch(url + "orders", { headers: { authorization: `Bearer ${tokens.EdDSA}` } });
  const elapsed = performance.now() - started;
  await cold.dispose();
  if (answer.status !== 200) throw new Error(`cold ${worker.name}: ${answer.status}`);
  return elapsed;
}
const coldEdgeauth = [];
const coldJose = [];
for (let i = 0; i < 5; i++) {
  coldEdgeauth.push(await coldStart(edgeauth("edgeauth-same-work", {}, {})));
  coldJose.push(await coldStart(joseWorker("jose", "each")));
}
const kb = (n) => (n / 1024).toFixed(1);

const lines = [
  "## Worker in workerd",
  "",
  `wrk, 1 thread, 8 connections, against each Worker's direct socket in one workerd (Miniflare); ` +
    "every request forwards to the same upstream Worker. Per algorithm, " +
    `${ROUNDS} rounds of ${runSeconds} s runs, the Workers in turn; requests per second, the median ` +
    `of each Worker's rounds${wrkCpu === undefined ? "" : " (workerd and wrk each on a CPU of its own)"}:`,
  "",
  "| Algorithm | edgeauth, same work as jose | edgeauth as deployed | jose | jose, bulk read | same work ÷ jose | same work ÷ jose bulk read | deployed ÷ jose |",
  "|---|---:|---:|---:|---:|---:|---:|---:|",
];
let allMeet = true;
let allMeetBulk = true;
for (const alg of algorithms) {
  const r = results[alg];
  const same = r["edgeauth-same-work"].rps / r.jose.rps;
  const sameBulk = r["edgeauth-same-work"].rps / r["jose-bulk"].rps;
  const deployed = r["edgeauth-deployed"].rps / r.jose.rps;
  allMeet &&= same >= 1;
  allMeetBulk &&= sameBulk >= 1;
  lines.push(
    `| ${alg} | ${r["edgeauth-same-work"].rps.toFixed(0)} | ${r["edgeauth-deployed"].rps.toFixed(0)} | ` +
      `${r.jose.rps.toFixed(0)} | ${r["jose-bulk"].rps.toFixed(0)} | **${same.toFixed(2)}** | ` +
      `**${sameBulk.toFixed(2)}** | ${deployed.toFixed(2)} |`,
  );
}
const errors = Object.values(results).flatMap((r) => Object.values(r).map((x) => x.errors));
lines.push(
  "",
  `- "Same work": verified-token cache off, KV read on every request. "As deployed": default ` +
    "policy (cache of verified tokens) and the 5 s isolate memory of KV answers; one token per run, " +
    "so this is the cache-hit path.",
  "- edgeauth reads a token's two deny-list keys (its `jti`, its user's revoke-all watermark) " +
    "with one KV bulk read. \"jose\" is the JavaScript Worker written the usual way, two reads in " +
    "parallel; \"jose, bulk read\" is the same Worker with one bulk read, so that column compares " +
    "the code alone.",
  `- Goal, at least as fast as jose doing the same work: ${allMeet ? "meets" : "**misses**"} ` +
    `(non-2xx answers during the runs: ${errors.reduce((a, b) => a + b, 0)}).`,
  `- The same goal against jose with the same bulk read, the code alone: ${allMeetBulk ? "meets" : "**misses**"}.`,
  "",
  "### Bundle",
  "",
  `- \`index_bg.wasm\`: ${kb(wasm.length)} KB raw, **${kb(gzipSync(wasm, { level: 9 }).length)} KB gzipped** ` +
    `(goal under 250 KB); \`index.js\`: ${kb(js.length)} KB raw, ${kb(gzipSync(js, { level: 9 }).length)} KB gzipped.`,
  `- Fresh workerd to first answer (median of 5): edgeauth ${median(coldEdgeauth).toFixed(0)} ms, ` +
    `jose ${median(coldJose).toFixed(0)} ms: the Wasm module costs about ` +
    `${(median(coldEdgeauth) - median(coldJose)).toFixed(0)} ms to compile and instantiate.`,
  "",
);
writeFileSync(out, lines.join("\n"));
console.log(lines.join("\n"));
