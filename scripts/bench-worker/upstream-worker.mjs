// The upstream both benchmarked Workers forward to, in the same workerd: it also serves the JWKS.
export default {
  async fetch(request, env) {
    const url = new URL(request.url);
    if (url.pathname === "/.well-known/jwks.json") {
      return new Response(env.JWKS, {
        headers: { "content-type": "application/json", "cache-control": "max-age=3600" },
      });
    }
    return new Response('{"ok":true}', { headers: { "content-type": "application/json" } });
  },
};
