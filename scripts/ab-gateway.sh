#!/usr/bin/env bash
# A/B of two gateway builds with the same client, alternating, on one
# machine: signed handshakes/s (64 in flight, 10 s) and memory per idle node
# connection (RSS with N nodes held minus idle, divided by N).
#
#   scripts/ab-gateway.sh BEFORE_BIN AFTER_BIN [RUNS] [NODES]
#
# BEFORE_BIN and AFTER_BIN are release `clawnode` binaries (build the old
# commit in a worktree: git worktree add /tmp/before <commit> && cargo build
# --release --bins there). The load generator is this tree's
# target/release/clawnode-load. Prints one JSON line per measurement and a
# summary with the medians. Everything runs on loopback and stops by itself.
set -euo pipefail
cd "$(dirname "$0")/.."
BEFORE=${1:?before binary}
AFTER=${2:?after binary}
RUNS=${3:-3}
NODES=${4:-4000}
ulimit -n "$(ulimit -Hn)"
cargo build --release --locked --quiet --bin clawnode-load
LOAD=target/release/clawnode-load
work=$(mktemp -d)
GW=
cleanup() { [ -n "$GW" ] && kill "$GW" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }

start() { # binary state-dir port
  "$1" run --gateway --state-dir "$2" --listen "127.0.0.1:$3" --config /dev/null >"$2.log" 2>&1 &
  GW=$!
  for _ in $(seq 100); do grep -q "gateway listening" "$2.log" 2>/dev/null && return; sleep 0.1; done
  echo "gateway $1 did not start" >&2; exit 1
}
stop() { kill "$GW"; wait "$GW" 2>/dev/null || true; GW=; }

port=18890
results="$work/results.jsonl"
for r in $(seq "$RUNS"); do
  for which in before after; do
    bin=$BEFORE; [ "$which" = after ] && bin=$AFTER
    dir="$work/$which-$r-hs"
    start "$bin" "$dir" $port
    hs=$($LOAD --url ws://127.0.0.1:$port --token-file "$dir/gateway.token" --mode handshakes \
      --concurrency 64 --duration 10 --presence-rate 0 | python3 -c 'import json,sys; print(json.load(sys.stdin)["handshakes_per_sec"])')
    stop
    dir="$work/$which-$r-hold"
    start "$bin" "$dir" $port
    sleep 1
    idle=$(rss_kib "$GW")
    $LOAD --url ws://127.0.0.1:$port --token-file "$dir/gateway.token" --nodes "$NODES" --duration 12 \
      --beacon-interval 60 --stats-interval 60 --presence-rate 0 --report-every 1 >"$dir.json" 2>"$dir.err" &
    loadpid=$!
    for _ in $(seq 600); do grep -q "connected $NODES " "$dir.err" 2>/dev/null && break; sleep 0.2; done
    sleep 3
    held=$(rss_kib "$GW")
    wait $loadpid || true
    stop
    per=$(( (held - idle) * 1024 / NODES ))
    line="{\"build\":\"$which\",\"run\":$r,\"handshakes_per_s\":$hs,\"idle_rss_kib\":$idle,\"held_rss_kib\":$held,\"nodes\":$NODES,\"bytes_per_connection\":$per}"
    echo "$line" | tee -a "$results"
  done
done
python3 - "$results" <<'EOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
for build in ("before", "after"):
    r = [x for x in rows if x["build"] == build]
    print(json.dumps({
        "build": build,
        "handshakes_per_s_median": statistics.median(x["handshakes_per_s"] for x in r),
        "handshakes_per_s": [round(x["handshakes_per_s"]) for x in r],
        "bytes_per_connection_median": statistics.median(x["bytes_per_connection"] for x in r),
        "bytes_per_connection": [x["bytes_per_connection"] for x in r],
        "idle_rss_kib_median": statistics.median(x["idle_rss_kib"] for x in r),
    }))
EOF
