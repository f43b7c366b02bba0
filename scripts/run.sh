#!/usr/bin/env bash
# Brings the whole mesh up locally: every role in one process, UI and API on
# http://localhost:8080, a local nats-server started if none answers on 127.0.0.1:4222.
# Builds the web UI (scripts/web.sh) and the release binary first.
set -euo pipefail
cd "$(dirname "$0")/.."
PIXELMESH_NO_BROWSER=1 source scripts/tools.sh
scripts/web.sh
cargo build --release --bin pixelmesh
exec ./target/release/pixelmesh all "$@"
