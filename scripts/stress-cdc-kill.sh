#!/usr/bin/env bash
# Long crash loop for change data capture: pgferry is SIGKILLed at random points while a
# workload runs, many times over; after every kill the slot must not be confirmed past what
# gdnlite holds, and in the end every collection must equal its table.
# Usage: scripts/stress-cdc-kill.sh [iterations, default 300]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/common.sh
ensure_postgres
PGFERRY_KILL_ITERATIONS="${1:-300}" cargo test --release --test cdc_kill -- --nocapture
