#!/usr/bin/env bash
# Runs every test: unit tests, and end-to-end tests against a private nats-server per test,
# the web UI's in headless Chromium (so the UI is built first). cargo nextest runs each test
# in its own process, several at once (.config/nextest.toml); arguments go to it.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/tools.sh
scripts/web.sh
exec cargo nextest run --workspace --locked "$@"
