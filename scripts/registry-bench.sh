#!/usr/bin/env bash
# Handshake rate against a gateway whose registry already holds PINS pinned
# instance ids (issue 15, finding 11; docs/PERFORMANCE.md), for one or more
# gateway builds, alternating, on one machine:
#
#   scripts/registry-bench.sh PINS RUNS BIN [BIN...]
#   scripts/registry-bench.sh 0,100000 3 before/clawnode after/clawnode
#   MODES=reconnect scripts/registry-bench.sh 100000 3 ...   # some modes only
#
# PINS may be a comma-separated list: each run goes through every count and
# every build in turn, so load from elsewhere on the machine spreads over
# all of them. The pins are pre-filled as an earlier version's pins.json
# (PINS made-up devices), which a build with the registry imports at start (the import
# time is printed) and an older build loads as its pins file. Each run
# measures, 10 s each with 64 handshakes in flight, signed node handshakes
# of new devices (every handshake pins a new instance id: `fresh`) and of
# 100 known devices reconnecting (`known`); then (`reconnect`) one known
# device reconnecting in a loop, one handshake at a time, while new devices
# flood the gateway as in `fresh`: its handshake latency is what an agent's
# reconnect costs during a burst of first connections. One JSON line per
# measurement. Everything runs on loopback and stops by itself. The load
# generator is this tree's target/release/clawnode-load.
set -euo pipefail
cd "$(dirname "$0")/.."
PINS_LIST=${1:?number of pins}
RUNS=${2:?runs}
shift 2
[ $# -ge 1 ] || { echo "usage: $0 PINS RUNS BIN [BIN...]" >&2; exit 2; }
ulimit -n "$(ulimit -Hn)"
cargo build --release --locked --quiet --bin clawnode-load
LOAD=target/release/clawnode-load
work=$(mktemp -d)
GW=
cleanup() { [ -n "$GW" ] && kill "$GW" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

pins_json() { # dir count
  python3 - "$1/pins.json" "$2" <<'EOF'
import json, sys
path, n = sys.argv[1], int(sys.argv[2])
pins = {f"bench-{i:08d}": {"deviceId": f"{i:064x}", "pinnedAtMs": 1_700_000_000_000 + i}
        for i in range(n)}
with open(path, "w") as f:
    json.dump({"version": 1, "pins": pins}, f)
EOF
}

# Every client runs on 127.0.0.1: room for the flood's 64 handshakes in
# flight and the reconnecting device's one under the per-address cap.
printf '[gateway]\nmax_pending_handshakes_per_ip = 256\n' >"$work/gateway.toml"

start() { # binary state-dir port
  local t0=$(date +%s.%N)
  "$1" run --gateway --state-dir "$2" --listen "127.0.0.1:$3" --config "$work/gateway.toml" >"$2.log" 2>&1 &
  GW=$!
  for _ in $(seq 600); do
    if grep -q "gateway listening" "$2.log" 2>/dev/null; then
      START_S=$(python3 -c "print(round($(date +%s.%N) - $t0, 2))")
      return
    fi
    sleep 0.1
  done
  echo "gateway $1 did not start:" >&2; cat "$2.log" >&2; exit 1
}
stop() { kill "$GW"; wait "$GW" 2>/dev/null || true; GW=; }

port=18891
for r in $(seq "$RUNS"); do
 for PINS in ${PINS_LIST//,/ }; do
  for bin in "$@"; do
    for mode in ${MODES:-fresh known reconnect}; do
      dir="$work/$(basename "$bin")-$r-$PINS-$mode"
      mkdir -p "$dir" && chmod 700 "$dir"
      [ "$PINS" -gt 0 ] && pins_json "$dir" "$PINS"
      start "$bin" "$dir" $port
      common=(--url ws://127.0.0.1:$port --token-file "$dir/gateway.token" --mode handshakes
        --duration 10 --presence-rate 0)
      case $mode in
        fresh) out=$($LOAD "${common[@]}" --concurrency 64) ;;
        known) out=$($LOAD "${common[@]}" --concurrency 64 --no-fresh --nodes 100) ;;
        reconnect)
          $LOAD "${common[@]}" --concurrency 64 >/dev/null &
          flood=$!
          out=$($LOAD "${common[@]}" --concurrency 1 --no-fresh --nodes 1)
          wait $flood || true ;;
      esac
      stop
      python3 - "$bin" "$r" "$mode" "$PINS" "$START_S" "$out" <<'EOF'
import json, sys
bin_, run, mode, pins, start_s, out = sys.argv[1:]
o = json.loads(out)
lat = o["handshake_latency_ms"]
print(json.dumps({"build": bin_, "run": int(run), "handshakes": mode, "pins_before": int(pins),
                  "start_s": float(start_s), "handshakes_per_s": round(o["handshakes_per_sec"]),
                  "p50_ms": lat["p50"], "p99_ms": lat["p99"], "max_ms": lat["max"],
                  "errors": o["errors"]}))
EOF
      rm -rf "$dir"
    done
  done
 done
done
