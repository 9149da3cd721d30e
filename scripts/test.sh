#!/usr/bin/env bash
# Sets up (idempotent) and runs every check: formatting, clippy with warnings as errors, and
# the whole test suite (unit tests, parity tests against transformers, engine tests).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
echo "[test] disk free: $(df -Ph . | awk 'NR==2 {print $4}')"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace
