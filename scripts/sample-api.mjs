// The sample API the main job puts behind the Worker: it answers every request with what the
// edge told it (the verified user id and scopes) and whether the client's Authorization reached it.
//   node scripts/sample-api.mjs [port]   (default 8082)
import http from "node:http";

const port = Number(process.argv[2] ?? 8082);
http
  .createServer((req, res) => {
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
      res.writeHead(200, { "content-type": "application/json" });
      res.end(JSON.stringify(answer, null, 2) + "\n");
    });
  })
  .listen(port, "127.0.0.1", () => console.log(`sample API on http://127.0.0.1:${port}`));
