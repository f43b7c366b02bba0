#!/usr/bin/env bash
# Runs every test: unit tests, and end-to-end tests against a private nats-server per test.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/tools.sh
exec cargo test --workspace "$@"
