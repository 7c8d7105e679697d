// Rewrites the JavaScript that worker-build bundles around the Worker's Wasm (scripts/build-worker
// runs it on verifier/worker/build/index.js, built unminified), then minifies it:
//
// 1. The default export becomes a plain module Worker, `{ fetch, scheduled }`, in place of
//    worker-build's `WorkerEntrypoint` class behind a `Proxy`: that wrapper builds an instance,
//    two proxies and an async wrapper for every request, ~11 µs of CPU each (measured in workerd
//    with Workers that only answer "ok"; ~5% of the Worker's requests per second when it does the
//    same work as jose, bench-results/worker.md). The wrapper's job is kept: before each event,
//    a Wasm instance that trapped is re-created (`checkReinitialize`), and a trap, thrown or
//    rejected, marks it for that (`handleMaybeCritical`).
// 2. wasm-bindgen's executor wakes Rust futures with the global `queueMicrotask` when there is
//    one, else with `.then` on a settled promise. workerd's `queueMicrotask` wraps every callback
//    (async context, error reporting); with three awaits a request that cost ~30 µs of CPU. The
//    probe it makes is made to find none: the same microtask queue, the same order.
//
// Each edit names what it relies on in worker-build's shim and wasm-bindgen's glue (both pinned,
// verifier/worker/Cargo.toml and scripts/lib.sh) and stops the build when that is not there
// exactly once.
//
//   node scripts/worker-entry.mjs <index.js>
import { readFileSync, writeFileSync } from "node:fs";
import { transform } from "esbuild";

const [file] = process.argv.slice(2);
let code = readFileSync(file, "utf8");

function once(pattern, what) {
  const found = code.match(new RegExp(pattern.source, "gm")) ?? [];
  if (found.length !== 1) {
    throw new Error(`${file}: ${what} found ${found.length} times, expected once (/${pattern.source}/)`);
  }
}

// 1. worker-build's shim: these names, and the handlers it wraps (wasm-bindgen's exports).
once(/^function checkReinitialize\(\) \{$/, "worker-build's checkReinitialize");
once(/^function handleMaybeCritical\(e\) \{$/, "worker-build's handleMaybeCritical");
once(/^function fetch\(request, env, ctx\) \{$/, "the Worker's fetch export");
once(/^function scheduled\(event, env, ctx\) \{$/, "the Worker's scheduled export");
once(/^ {2}shim_default as default$/, "worker-build's default export");
code = code.replace(/^ {2}shim_default as default$/m, "  edgeauthWorker as default");
code += `
// scripts/worker-entry.mjs: a plain module Worker in place of the proxied WorkerEntrypoint.
var edgeauthWorker = {
  fetch(request, env, ctx) {
    return recovering(fetch, request, env, ctx);
  },
  scheduled(event, env, ctx) {
    return recovering(scheduled, event, env, ctx);
  },
};
function recovering(handler, event, env, ctx) {
  checkReinitialize();
  try {
    // A response, or a promise of one (the fetch export answers at once when it can).
    const answer = handler(event, env, ctx);
    if (!(answer instanceof Promise)) return answer;
    return answer.catch((e) => {
      handleMaybeCritical(e);
      throw e;
    });
  } catch (e) {
    handleMaybeCritical(e);
    throw e;
  }
}
`;

// 2. wasm-bindgen's probe for queueMicrotask: `function(arg0) { const ret = arg0.queueMicrotask; ... }`.
const probe = /(__wbg_queueMicrotask_[0-9a-f]+: function\((\w+)\) \{\s*const ret = )\2\.queueMicrotask;/;
once(probe, "wasm-bindgen's queueMicrotask probe");
code = code.replace(probe, "$1undefined;");

const minified = await transform(code, { minify: true, format: "esm" });
writeFileSync(file, minified.code);
