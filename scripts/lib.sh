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
