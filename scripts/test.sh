#!/usr/bin/env bash
# Sets up (idempotent) and runs every check: formatting, clippy with warnings as errors, and
# the whole test suite (unit tests, parity tests against transformers, engine tests).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace
