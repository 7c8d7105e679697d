// The feed benchmark (scripts/bench feed): simulated edges polling GET /v1/revocations on two
// release origins that share one dynoxide and one redis-server, while logouts append to the
// feed. Each poller is an edge: its own client address (X-Forwarded-For, so each spends its own
// rate-limit budget), one poll a second on one origin, the cursor from the last answer and the
// ETag sent back in If-None-Match.
//
//   FEED_ORIGINS="http://a http://b" FEED_PIDS="origin-a:PID origin-b:PID dynoxide:PID redis:PID" \
//     FEED_SECONDS=30 FEED_OUT=report.md node scripts/bench-feed/run.mjs
//
// Two phases, 100 then 1,000 pollers, each with the same logout rate: per origin, DynamoDB calls
// per second by operation (from its /metrics), CPU, and the polls' latency. Then every poller
// must have seen every entry the feed holds, once.
import { readFileSync, writeFileSync } from "node:fs";

const origins = process.env.FEED_ORIGINS.split(" ");
const seconds = Number(process.env.FEED_SECONDS ?? 30);
const out = process.env.FEED_OUT;
const pids = Object.fromEntries(process.env.FEED_PIDS.split(" ").map((p) => p.split(":")));
// No pollers first: what the logouts and the origins' own upkeep read, which the pollers'
// phases are measured against.
const PHASES = [0, 100, 1000];
const LOGOUTS_PER_SECOND = 20;
const PASSWORD = "a bench passphrase";

const clockTicks = 100; // USER_HZ on Linux
function cpuSeconds(pid) {
  const fields = readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1].split(" ");
  return (Number(fields[11]) + Number(fields[12])) / clockTicks;
}

async function post(origin, path, body, token) {
  const headers = { "content-type": "application/json", "x-requested-with": "fetch" };
  if (token) headers.authorization = `Bearer ${token}`;
  const response = await fetch(`${origin}${path}`, {
    method: "POST",
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  return { status: response.status, body: text ? JSON.parse(text) : null };
}

// DynamoDB calls so far, by operation, from an origin's metrics.
async function dynamoCalls(origin) {
  const text = await (await fetch(`${origin}/metrics`)).text();
  const calls = {};
  for (const match of text.matchAll(/^edgeauth_dynamodb_request_duration_seconds_count\{operation="([^"]+)"\} (\d+)/gm)) {
    calls[match[1]] = Number(match[2]);
  }
  return calls;
}

// The feed route's latency histogram at an origin: cumulative counts by upper bound (seconds).
async function feedLatency(origin) {
  const text = await (await fetch(`${origin}/metrics`)).text();
  const buckets = [];
  for (const match of text.matchAll(/^edgeauth_http_request_duration_seconds_bucket\{([^}]*)\} (\d+)/gm)) {
    const labels = match[1];
    if (!labels.includes('route="/v1/revocations"')) continue;
    const le = /le="([^"]+)"/.exec(labels)[1];
    buckets.push([le === "+Inf" ? Infinity : Number(le), Number(match[2])]);
  }
  return buckets.sort((a, b) => a[0] - b[0]);
}

// The smallest bucket bound within which a share `p` of the requests between two histogram
// readings answered: the origin's own view of the polls' latency, in ms.
function bucketPercentile(before, after, p) {
  const counts = after.map(([le, n], i) => [le, n - (before[i]?.[1] ?? 0)]);
  const total = counts.at(-1)?.[1] ?? 0;
  const hit = counts.find(([, n]) => n >= total * p);
  return total === 0 || !hit ? NaN : hit[0] * 1000;
}

// Sessions to log out: one login each (argon2 on the origins), made before the phases.
async function sessions(count) {
  const tokens = [];
  const users = Array.from({ length: 10 }, (_, i) => `feed-bench-${Date.now()}-${i}@example.com`);
  for (const [i, email] of users.entries()) {
    const r = await post(origins[i % 2], "/v1/register", { email, password: PASSWORD });
    if (r.status !== 201 && r.status !== 202) throw new Error(`register: ${r.status}`);
  }
  let next = 0;
  async function worker() {
    while (tokens.length < count) {
      const i = next++;
      const r = await post(origins[i % 2], "/v1/login", { email: users[i % users.length], password: PASSWORD });
      if (r.status !== 200) throw new Error(`login: ${r.status} ${JSON.stringify(r.body)}`);
      tokens.push(r.body.access_token);
    }
  }
  await Promise.all(Array.from({ length: 8 }, worker));
  return tokens.slice(0, count);
}

const percentile = (sorted, p) => sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * p))];

async function phase(pollerCount, tokens) {
  const pollers = Array.from({ length: pollerCount }, (_, i) => ({
    origin: origins[i % 2],
    address: `10.${(i >> 16) & 255}.${(i >> 8) & 255}.${i & 255}`,
    cursor: 0,
    etag: null,
    seen: new Set(),
  }));
  const latencies = [];
  const statuses = {};
  let stop = false;
  async function poll(poller) {
    const headers = { "x-forwarded-for": poller.address };
    if (poller.etag) headers["if-none-match"] = poller.etag;
    const started = performance.now();
    const response = await fetch(`${poller.origin}/v1/revocations?after=${poller.cursor}`, { headers });
    const text = await response.text();
    latencies.push(performance.now() - started);
    statuses[response.status] = (statuses[response.status] ?? 0) + 1;
    if (response.status === 200) {
      const page = JSON.parse(text);
      for (const entry of page.entries) poller.seen.add(entry.seq);
      poller.cursor = page.next;
      poller.etag = response.headers.get("etag");
    } else if (response.status !== 304) {
      throw new Error(`poll: ${response.status} ${text}`);
    }
  }
  async function run(poller, offset) {
    await new Promise((resolve) => setTimeout(resolve, offset));
    while (!stop) {
      const started = performance.now();
      await poll(poller);
      await new Promise((resolve) => setTimeout(resolve, Math.max(0, 1000 - (performance.now() - started))));
    }
  }
  let logouts = 0;
  async function revoke() {
    while (!stop && tokens.length) {
      const started = performance.now();
      const r = await post(origins[logouts % 2], "/v1/logout", undefined, tokens.pop());
      if (r.status !== 204) throw new Error(`logout: ${r.status} ${JSON.stringify(r.body)}`);
      logouts += 1;
      await new Promise((resolve) => setTimeout(resolve, Math.max(0, 1000 / LOGOUTS_PER_SECOND - (performance.now() - started))));
    }
  }
  const before = await Promise.all(origins.map(dynamoCalls));
  const histogramBefore = await Promise.all(origins.map(feedLatency));
  const cpuBefore = Object.fromEntries(Object.entries(pids).map(([name, pid]) => [name, cpuSeconds(pid)]));
  const started = performance.now();
  const running = [...pollers.map((p, i) => run(p, (i * 1000) / pollerCount)), revoke()];
  await new Promise((resolve) => setTimeout(resolve, seconds * 1000));
  stop = true;
  await Promise.all(running);
  const elapsed = (performance.now() - started) / 1000;
  const after = await Promise.all(origins.map(dynamoCalls));
  const histogramAfter = await Promise.all(origins.map(feedLatency));
  const serverP99 = origins.map((_, i) => bucketPercentile(histogramBefore[i], histogramAfter[i], 0.99));
  const cpu = Object.fromEntries(Object.entries(pids).map(([name, pid]) => [name, (cpuSeconds(pid) - cpuBefore[name]) / elapsed]));
  // Every poller catches up once more, then must hold every entry of the feed.
  await new Promise((resolve) => setTimeout(resolve, 1500));
  await Promise.all(pollers.map(poll));
  const feed = [];
  for (let cursor = 0; ; ) {
    const page = await (await fetch(`${origins[0]}/v1/revocations?after=${cursor}&limit=1000`)).json();
    feed.push(...page.entries.map((e) => e.seq));
    if (page.next === cursor) break;
    cursor = page.next;
  }
  const missed = pollers.filter((p) => feed.some((seq) => !p.seen.has(seq))).length;
  latencies.sort((a, b) => a - b);
  const calls = origins.map((_, i) =>
    Object.fromEntries(Object.keys(after[i]).map((op) => [op, ((after[i][op] ?? 0) - (before[i][op] ?? 0)) / elapsed])),
  );
  return { pollerCount, elapsed, polls: latencies.length, statuses, latencies, serverP99, calls, cpu, logouts, feed: feed.length, missed };
}

const total = PHASES.length * (seconds + 2) * LOGOUTS_PER_SECOND;
process.stderr.write(`logging in ${total} sessions to log out ...\n`);
const tokens = await sessions(total);
// The tails are read at start: wait until both answer from memory.
for (const origin of origins) {
  const deadline = Date.now() + 30_000;
  while (!(await fetch(`${origin}/v1/revocations`)).headers.get("etag")) {
    if (Date.now() > deadline) throw new Error(`${origin} never served its tail`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}
const results = [];
for (const pollerCount of PHASES) {
  process.stderr.write(`${pollerCount} pollers for ${seconds} s ...\n`);
  results.push(await phase(pollerCount, tokens));
}

const fmt = (n, digits = 1) => (Number.isFinite(n) ? n.toFixed(digits) : "–");
const signed = (n) => (n < 0 ? `−${fmt(-n)}` : fmt(n));
const reads = (calls) => (calls.Query ?? 0) + (calls.GetItem ?? 0) + (calls.BatchGetItem ?? 0) + (calls.Scan ?? 0);
const [baseline, ...polled] = results;
// What the pollers cost DynamoDB at one origin: its reads in the phase over the phase without
// pollers (the logouts' and the origins' own reads).
const pollerReads = (r, i) => reads(r.calls[i]) - reads(baseline.calls[i]);
const lines = [
  "## Feed",
  "",
  `Two release origins on one dynoxide and one redis-server; simulated edges poll \`GET /v1/revocations\` once a second each, half on each origin, each from its own address (\`X-Forwarded-For\`, so each spends its own \`rate_limits.feed\` budget), with the last answer's cursor and \`ETag\`; meanwhile ${LOGOUTS_PER_SECOND} logouts a second append to the feed. ${seconds} s per phase; the first has no pollers, and the pollers' DynamoDB reads are each phase's reads over it. DynamoDB calls come from each origin's \`edgeauth_dynamodb_request_duration_seconds_count\`; CPU is user + system time over the phase, in cores. Poll latency: as the pollers (one Node process, on the same two cores) saw it, and at the origins (the smallest histogram bucket holding 99%).`,
  "",
  "| pollers | polls/s | 200 / 304 | poll p50 / p99 ms, pollers | poll p99 ms, origins A / B | DynamoDB reads/s, origin A / B | pollers' DynamoDB reads/s, origin A / B | all DynamoDB calls/s, origin A / B | origin CPU, A / B | dynoxide CPU | logouts | pollers that missed an entry |",
  "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
];
const all = (calls) => Object.values(calls).reduce((a, b) => a + b, 0);
for (const r of results) {
  const pollsPerSecond = r.polls / r.elapsed;
  const polled = r.pollerCount > 0;
  lines.push(
    `| ${r.pollerCount} | ${fmt(pollsPerSecond, 0)} | ${r.statuses[200] ?? 0} / ${r.statuses[304] ?? 0} | ${polled ? `${fmt(percentile(r.latencies, 0.5), 2)} / ${fmt(percentile(r.latencies, 0.99), 2)}` : "–"} | ${polled ? `≤ ${fmt(r.serverP99[0], 1)} / ≤ ${fmt(r.serverP99[1], 1)}` : "–"} | ${fmt(reads(r.calls[0]))} / ${fmt(reads(r.calls[1]))} | ${polled ? `${signed(pollerReads(r, 0))} / ${signed(pollerReads(r, 1))}` : "–"} | ${fmt(all(r.calls[0]))} / ${fmt(all(r.calls[1]))} | ${fmt(r.cpu["origin-a"], 2)} / ${fmt(r.cpu["origin-b"], 2)} | ${fmt(r.cpu.dynoxide, 2)} | ${r.logouts} | ${polled ? `${r.missed} of ${r.pollerCount}` : "–"} |`,
  );
}
const [small, large] = polled;
const maxReads = Math.max(...polled.flatMap((r) => [0, 1].map((i) => pollerReads(r, i))));
const goal = maxReads <= 10 && polled.every((r) => r.missed === 0);
lines.push(
  "",
  `- Origin CPU per poll: ${fmt(((large.cpu["origin-a"] + large.cpu["origin-b"]) - (baseline.cpu["origin-a"] + baseline.cpu["origin-b"])) / (large.polls / large.elapsed) * 1e6, 0)} µs (${large.pollerCount} pollers over no pollers).`,
  `- Goal, the pollers' DynamoDB reads (a phase's reads over the phase without pollers; within a few a second of noise from the logouts) ≤ 10 a second per origin whatever their number, and no poller misses an entry: **${goal ? "meets" : "misses"}** (at most ${signed(maxReads)} with ${small.pollerCount} or ${large.pollerCount} pollers; before the in-memory tail, every poll was a DynamoDB query: ${fmt(large.polls / large.elapsed / 2, 0)} a second per origin with ${large.pollerCount}).`,
  "- DynamoDB calls by operation, per origin (calls/s):",
  "",
  "```",
  ...results.flatMap((r) => r.calls.map((calls, i) => `${r.pollerCount} pollers, origin ${"AB"[i]}: ${Object.entries(calls).filter(([, v]) => v > 0).sort().map(([op, v]) => `${op} ${fmt(v, 2)}`).join(", ")}`)),
  "```",
);
writeFileSync(out, lines.join("\n") + "\n");
process.stdout.write(lines.join("\n") + "\n");
