// Serves the example web client (examples/web/) as a static site, with no build step.
//   node scripts/web-serve.mjs [--port 8090] [--host 127.0.0.1] [--config FILE]
// --config: the page's settings (origin, Worker and Envoy URLs), served as /config.json
// (default examples/web/config.json). The mailed links' paths (/verify-email, /reset-password)
// answer index.html: the token is in the fragment, which the page reads. Only the page's own
// files are served, nothing else from the disk. Prints "web client on <URL>" once listening
// (--port 0 picks a free port).
import http from "node:http";
import { readFileSync } from "node:fs";
import { parseArgs } from "node:util";

const { values: args } = parseArgs({
  options: {
    port: { type: "string", default: "8090" },
    host: { type: "string", default: "127.0.0.1" },
    config: { type: "string" },
  },
});
const site = new URL("../examples/web/", import.meta.url);
const configPath = args.config ?? new URL("config.json", site);
const config = JSON.parse(readFileSync(configPath, "utf8"));
for (const name of ["origin", "worker", "envoy"]) {
  if (typeof config[name] !== "string" || !/^https?:\/\/[^/]+$/.test(config[name])) {
    console.error(`${configPath}: "${name}" must be an origin URL such as http://127.0.0.1:8080`);
    process.exit(2);
  }
}

const file = (name, type) => ({ body: readFileSync(new URL(name, site)), type });
const page = file("index.html", "text/html; charset=utf-8");
const routes = new Map([
  ["/", page],
  ["/index.html", page],
  ["/verify-email", page],
  ["/reset-password", page],
  ["/app.js", file("app.js", "text/javascript; charset=utf-8")],
  ["/style.css", file("style.css", "text/css; charset=utf-8")],
  ["/config.json", { body: Buffer.from(JSON.stringify(config)), type: "application/json" }],
]);
// The page talks to the three services and nothing else; no page may frame it.
const policy = [
  "default-src 'self'",
  `connect-src 'self' ${config.origin} ${config.worker} ${config.envoy}`,
  "base-uri 'none'",
  "form-action 'none'",
  "frame-ancestors 'none'",
].join("; ");

const server = http.createServer((req, res) => {
  const path = new URL(req.url, "http://page").pathname;
  const found = req.method === "GET" || req.method === "HEAD" ? routes.get(path) : undefined;
  if (!found) {
    res.writeHead(404, { "content-type": "text/plain" });
    res.end("not found\n");
    return;
  }
  res.writeHead(200, {
    "content-type": found.type,
    "cache-control": "no-store",
    "content-security-policy": policy,
    "referrer-policy": "no-referrer",
    "x-content-type-options": "nosniff",
  });
  res.end(req.method === "HEAD" ? undefined : found.body);
});
server.listen(Number(args.port), args.host, () => {
  const { address, port } = server.address();
  console.log(`web client on http://${address}:${port}`);
});
