// The sample API the main job puts behind the edges: it answers every request with what the
// edge told it (the verified user id and scopes) and whether the client's Authorization reached it.
// For the web pages named after the port (exact origins, e.g. the example web client's), it
// answers CORS as an API behind the edges must: their preflights, which the edges pass on
// (`cors_preflight_bypass`), and readable answers, credentials included. The edges add CORS to
// their own refusals (the policy's `cors`); the API's answers are its own to mark.
//   node scripts/sample-api.mjs [port] [page-origin ...]   (default port 8082)
import http from "node:http";

const port = Number(process.argv[2] ?? 8082);
const pages = new Set(process.argv.slice(3));
http
  .createServer((req, res) => {
    const page = pages.has(req.headers.origin) ? req.headers.origin : null;
    const cors = pages.size === 0 ? {} : { vary: "origin" };
    if (page) {
      cors["access-control-allow-origin"] = page;
      cors["access-control-allow-credentials"] = "true";
    }
    if (page && req.method === "OPTIONS" && req.headers["access-control-request-method"]) {
      res.writeHead(204, {
        ...cors,
        "access-control-allow-methods": "GET, POST, PUT, PATCH, DELETE",
        "access-control-allow-headers": "authorization, content-type",
        "access-control-max-age": "600",
      });
      res.end();
      return;
    }
    let bytes = 0;
    req.on("data", (chunk) => (bytes += chunk.length));
    req.on("end", () => {
      const answer = {
        api: "sample",
        method: req.method,
        path: req.url,
        user_id: req.headers["x-user-id"] ?? null,
        scope: req.headers["x-user-scope"] ?? null,
        authorization_reached_the_api: "authorization" in req.headers,
        body_bytes: bytes,
      };
      res.writeHead(200, { ...cors, "content-type": "application/json" });
      res.end(JSON.stringify(answer, null, 2) + "\n");
    });
  })
  .listen(port, "127.0.0.1", () => console.log(`sample API on http://127.0.0.1:${port}`));
