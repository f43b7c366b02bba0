#!/usr/bin/env bash
# Runs every test: unit tests, and end-to-end tests against a private nats-server per test,
# the web UI's in headless Chromium (so the UI is built first).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/tools.sh
scripts/web.sh
exec cargo test --workspace "$@"
