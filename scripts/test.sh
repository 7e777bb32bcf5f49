#!/usr/bin/env bash
# The one test command: installs what is missing (PostgreSQL 15 + wal2json, rustfmt, clippy),
# then checks formatting, lints with warnings as errors, and runs every test.
# Integration tests start their own private PostgreSQL clusters (as the postgres user when root).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/common.sh

ensure_postgres
ensure_rust_components

log "cargo fmt --check"
cargo fmt --all -- --check
log "cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets -- -D warnings
log "cargo test --all-targets"
cargo test --all-targets
log "all green"
