// Runs a wasm32-wasip1 test binary in Node's V8 through WASI preview 1 (cargo target runner).
// V8 is the Wasm engine of both edge hosts (workerd, and Envoy's envoy.wasm.runtime.v8), so the
// core's test suite passing here is its verdicts checked inside the engine that will run them.
import { WASI } from 'node:wasi';
import { readFileSync } from 'node:fs';
const [, , wasmPath, ...args] = process.argv;
const wasi = new WASI({ version: 'preview1', args: [wasmPath, ...args], env: {}, returnOnExit: true });
const module = new WebAssembly.Module(readFileSync(wasmPath));
const instance = new WebAssembly.Instance(module, wasi.getImportObject());
process.exitCode = wasi.start(instance);
