// The example web client: one page on its own origin calling the edgeauth origin (accounts,
// tokens) and the sample API through both edges (the Worker and Envoy).
//
// - The access token lives in this module's memory only: never in localStorage or a cookie a
//   script can read, so an injected script finds nothing that outlives the page.
// - The refresh token is the origin's HttpOnly cookie (Path=/v1/token/refresh, SameSite=Strict):
//   this page never sees it. It refreshes with `credentials: "include"` and `X-Requested-With`,
//   which the origin's CSRF check asks of a cookie refresh.
// - When an edge refuses the access token as expired, the page refreshes silently and retries.
//   It can read why the edge refused (the JSON body, `WWW-Authenticate`) because the edges
//   answer their refusals with CORS headers for this page's origin; without them a refusal
//   would look like an outage.
// - A link mailed by the origin (`/verify-email#token=…`, `/reset-password#token=…`) opens this
//   page; the token is in the fragment, which no server and no Referer sees, and is posted from
//   here.

const $ = (id) => document.getElementById(id);

const config = await (await fetch("/config.json", { cache: "no-store" })).json();
const apiPath = config.api_path ?? "/orders";

/** The access token (memory only), and when it expires (Unix seconds). */
let access = null;
/** One refresh at a time: concurrent callers share it. */
let refreshing = null;
let refreshCount = 0;

function log(message) {
  const item = document.createElement("li");
  item.textContent = `${new Date().toLocaleTimeString()} ${message}`;
  $("log").prepend(item);
}

function show(element, text, attributes = {}) {
  element.textContent = text;
  for (const [name, value] of Object.entries(attributes)) element.dataset[name] = value;
}

/** A JWT's claims, for display only: the page never trusts them, the edges verify. */
function claimsOf(token) {
  try {
    const payload = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    return JSON.parse(atob(payload));
  } catch {
    return {};
  }
}

function setAccess(token) {
  access = token ? { token, exp: claimsOf(token).exp ?? 0 } : null;
  const session = $("session");
  if (access) {
    const until = new Date(access.exp * 1000).toLocaleTimeString();
    show(session, `Signed in; the access token (in memory only) expires at ${until}.`, {
      state: "signed-in",
      exp: String(access.exp),
    });
  } else {
    show(session, "Signed out.", { state: "signed-out", exp: "" });
  }
}

async function read(response) {
  const text = await response.text();
  let json = null;
  try {
    json = text ? JSON.parse(text) : null;
  } catch {
    // Not JSON: shown as text.
  }
  return { status: response.status, json, text, headers: response.headers };
}

/** A call to the origin. Credentials are always included, as a real app's API helper would:
 * the cookie's Path keeps it to refreshes all the same. */
async function callOrigin(path, { method = "GET", body, token, headers = {} } = {}) {
  const init = { method, credentials: "include", headers: { ...headers } };
  if (body !== undefined) {
    init.headers["content-type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  if (token) init.headers.authorization = `Bearer ${token}`;
  return read(await fetch(config.origin + path, init));
}

function describe(answer) {
  const why = answer.json?.reason ?? answer.json?.error ?? "";
  return why ? `${answer.status} ${why}` : String(answer.status);
}

/** Exchanges the refresh cookie for a new access token. */
function refresh(why) {
  refreshing ??= (async () => {
    try {
      const answer = await callOrigin("/v1/token/refresh", {
        method: "POST",
        headers: { "x-requested-with": "edgeauth-example" },
      });
      if (answer.status === 200 && answer.json?.access_token) {
        setAccess(answer.json.access_token);
        refreshCount += 1;
        show($("refreshes"), `${refreshCount} silent refresh(es); the last one: ${why}.`, {
          count: String(refreshCount),
        });
        log(`refreshed silently (${why})`);
        return true;
      }
      if (access) log(`refresh refused: ${describe(answer)}`);
      setAccess(null);
      return false;
    } catch (error) {
      // The origin unreachable, or this page not on its allow-list: nothing readable.
      log(`refresh failed: ${error.message}`);
      setAccess(null);
      return false;
    } finally {
      refreshing = null;
    }
  })();
  return refreshing;
}

/** Runs `call` with the access token; if it is refused as expired (401), refreshes once and
 * runs it again. `where` names who refused, for the log. */
async function withAccess(where, call) {
  if (!access) await refresh("no access token in memory");
  if (!access) return null;
  let answer = await call(access.token);
  if (answer.status === 401 && access) {
    log(`${where} refused the access token (${describe(answer)})`);
    if (await refresh(`${where} answered ${describe(answer)}`)) answer = await call(access.token);
  }
  return answer;
}

async function callEdge(edge, token) {
  try {
    return await read(
      await fetch(config[edge] + apiPath, { headers: { authorization: `Bearer ${token}` } }),
    );
  } catch (error) {
    // What a refusal without CORS headers would look like: nothing readable.
    return { status: 0, json: null, text: `network error: ${error.message}`, headers: new Headers() };
  }
}

function showEdgeAnswer(edge, answer) {
  const element = $(`${edge}-result`);
  if (!answer) {
    show(element, "Log in first.", { status: "", reason: "" });
    return;
  }
  const challenge = answer.headers.get("www-authenticate");
  const lines = [`HTTP ${answer.status}`];
  if (challenge) lines.push(`WWW-Authenticate: ${challenge}`);
  lines.push(answer.json ? JSON.stringify(answer.json, null, 2) : answer.text);
  show(element, lines.join("\n"), {
    status: String(answer.status),
    reason: answer.json?.reason ?? "",
  });
}

for (const edge of ["worker", "envoy"]) {
  $(`call-${edge}`).addEventListener("click", async () => {
    show($(`${edge}-result`), "Calling…", { status: "", reason: "" });
    const name = edge === "worker" ? "the Worker" : "Envoy";
    showEdgeAnswer(edge, await withAccess(name, (token) => callEdge(edge, token)));
  });
}

$("register-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const answer = await callOrigin("/v1/register", {
    method: "POST",
    body: { email: $("register-email").value, password: $("register-password").value },
  });
  const text = {
    202: "Check your mail: the link in it verifies your address.",
    201: "Account created (this origin sends no mail).",
  }[answer.status];
  show($("register-result"), text ?? `Not registered: ${describe(answer)}`, {
    status: String(answer.status),
  });
});

$("login-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const answer = await callOrigin("/v1/login", {
    method: "POST",
    body: { email: $("login-email").value, password: $("login-password").value },
  });
  if (answer.status === 200) {
    setAccess(answer.json.access_token);
    show($("login-result"), "Logged in.", { status: "200" });
    log("logged in");
  } else {
    show($("login-result"), `Not logged in: ${describe(answer)}`, { status: String(answer.status) });
  }
});

$("forgot-button").addEventListener("click", async () => {
  const answer = await callOrigin("/v1/password/forgot", {
    method: "POST",
    body: { email: $("login-email").value },
  });
  show(
    $("login-result"),
    answer.status === 202 ? "If that address has an account, a reset link is on its way." : describe(answer),
    { status: String(answer.status) },
  );
});

$("list-sessions").addEventListener("click", async () => {
  const answer = await withAccess("the origin", (token) => callOrigin("/v1/sessions", { token }));
  const list = $("sessions");
  list.replaceChildren();
  if (answer?.status !== 200) {
    show(list, answer ? describe(answer) : "Log in first.", { count: "" });
    return;
  }
  for (const session of answer.json.sessions) {
    const item = document.createElement("li");
    item.className = session.current ? "session current" : "session";
    const active = new Date(session.last_active_at * 1000).toLocaleString();
    item.textContent = `${session.id}: last active ${active}${session.mfa ? ", MFA" : ""}${
      session.current ? " (this session)" : ""
    }`;
    list.append(item);
  }
  list.dataset.count = String(answer.json.sessions.length);
});

$("password-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const body = {
    current_password: $("current-password").value,
    new_password: $("new-password").value,
  };
  const answer = await withAccess("the origin", (token) =>
    callOrigin("/v1/me/password", { method: "POST", body, token }),
  );
  const text =
    answer?.status === 204
      ? "Password changed; your other sessions have ended."
      : `Not changed: ${answer ? describe(answer) : "log in first"}`;
  show($("password-result"), text, { status: String(answer?.status ?? "") });
});

/** After logout: asks both edges with the old token until both refuse it (the Worker hears of
 * the logout at once; Envoy within a second or two, from the origin's revocation feed). */
async function showRefused(token) {
  const result = $("logout-result");
  show(result, "Logged out. Asking both edges with the old access token…", { state: "checking" });
  const deadline = Date.now() + 15_000;
  for (;;) {
    const answers = {};
    for (const edge of ["worker", "envoy"]) {
      answers[edge] = await callEdge(edge, token);
      showEdgeAnswer(edge, answers[edge]);
    }
    if (answers.worker.status === 401 && answers.envoy.status === 401) {
      show(result, "Logged out: the Worker and Envoy both refuse the old access token.", {
        state: "refused",
      });
      log("both edges refuse the old access token");
      return;
    }
    if (Date.now() > deadline) {
      show(result, "Logged out, but an edge still accepts the old access token.", { state: "accepted" });
      return;
    }
    await new Promise((resolve) => setTimeout(resolve, 250));
  }
}

$("logout").addEventListener("click", async () => {
  if (!access) await refresh("no access token in memory");
  if (!access) {
    show($("logout-result"), "Not signed in.", { state: "" });
    return;
  }
  const token = access.token;
  const answer = await callOrigin("/v1/logout", { method: "POST", token });
  setAccess(null);
  log(`logged out: ${describe(answer)}`);
  await showRefused(token);
});

/** A mailed link opened this page: take the token from the fragment, drop it from the address
 * bar and history, and post it. */
async function openLink() {
  const path = location.pathname;
  if (path !== "/verify-email" && path !== "/reset-password") return;
  const token = new URLSearchParams(location.hash.slice(1)).get("token");
  history.replaceState(null, "", "/");
  $("link").hidden = false;
  const result = $("link-result");
  if (!token) {
    show(result, "This link has no token.", { state: "invalid" });
    return;
  }
  if (path === "/verify-email") {
    const answer = await callOrigin("/v1/email/verify", { method: "POST", body: { token } });
    show(
      result,
      answer.status === 204 ? "Your address is verified." : `Not verified: ${describe(answer)}`,
      { state: answer.status === 204 ? "verified" : "failed" },
    );
    log(`verification link: ${describe(answer)}`);
    return;
  }
  show(result, "Choose a new password.", { state: "reset-ready" });
  $("reset-form").hidden = false;
  $("reset-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const answer = await callOrigin("/v1/password/reset", {
      method: "POST",
      body: { token, password: $("reset-password").value },
    });
    show(
      result,
      answer.status === 204
        ? "Password set; every session has ended. Log in with it."
        : `Not set: ${describe(answer)}`,
      { state: answer.status === 204 ? "reset" : "failed" },
    );
  });
}

await openLink();
// A reload loses the access token (memory only); the refresh cookie, if any, brings it back.
if (!(await refresh("page loaded"))) setAccess(null);
