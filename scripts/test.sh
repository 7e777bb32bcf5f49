#!/usr/bin/env bash
# The one test command: installs what is missing (PostgreSQL 15 + wal2json from Debian; the
# PostgreSQL 14, 16, 17 and 18 server binaries into $PGFERRY_PG_MAJORS, see ensure_pg_majors;
# rustfmt, clippy), then checks formatting, lints with warnings as errors, and runs every test.
# Integration tests start their own private PostgreSQL clusters (as the postgres user when root).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/common.sh

ensure_postgres
ensure_pg_majors
export PGFERRY_PG_MAJORS
ensure_rust_components

log "cargo fmt --check"
cargo fmt --all -- --check
log "cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets -- -D warnings
log "cargo test --all-targets"
cargo test --all-targets
log "all green"
