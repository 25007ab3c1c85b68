#!/usr/bin/env bash
# Runs the load generator (release build) with the open-file limit raised:
# one socket per simulated node.
#
#   scripts/load.sh --url ws://127.0.0.1:18789 --token-file TOKEN --nodes 10000 ...
#
# Start a gateway to point it at with, for example:
#
#   ulimit -n "$(ulimit -Hn)"
#   clawnode run --gateway --state-dir /tmp/gw --listen 127.0.0.1:18789
#
# (its join token is then in /tmp/gw/gateway.token, its operator token, for
# the system-presence caller, in /tmp/gw/operator.token: pass it with
# --operator-token-file). `clawnode-load --help` lists
# the modes; scripts/bench-gateway.sh runs the documented comparison with
# OpenClaw. Results: one JSON line on stdout.
set -euo pipefail
cd "$(dirname "$0")/.."
ulimit -n "$(ulimit -Hn)"
cargo build --release --locked --quiet --bin clawnode-load
exec target/release/clawnode-load "$@"
