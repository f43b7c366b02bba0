#!/usr/bin/env bash
# Runs every test: unit tests, and end-to-end tests against a private nats-server per test,
# the web UI's in headless Chromium (so the UI is built first). cargo nextest runs each test
# in its own process, several at once (.config/nextest.toml); arguments go to it.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/tools.sh
scripts/web.sh
# Built for the static musl target the container image ships: the compose test puts this very
# build's node binary in the image instead of compiling the workspace a second time.
exec cargo nextest run --workspace --locked --target x86_64-unknown-linux-musl "$@"
