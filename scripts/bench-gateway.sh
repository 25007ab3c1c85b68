#!/usr/bin/env bash
# The gateway comparison of docs/PERFORMANCE.md: the same client
# (clawnode-load) against our gateway and the real OpenClaw 2026.9.6
# gateway, in one run, on this machine. Prints one JSON line per
# measurement (also appended to $OUT, default docs/perf/gateway-runs.jsonl).
#
#   scripts/bench-gateway.sh [runs]       # default 3 runs of each
#
# Steps, for each gateway: idle RSS (process tree), sustained first-time
# signed handshakes/s (64 in flight, 10 s), system-presence round trips with
# 200 nodes connected (50 calls/s, 20 s). For ours also: 10,000 nodes held
# 60 s with beacons and stats every 60 s (RSS, presence p99), and a
# reconnect storm of 10,000 nodes through a gateway restart.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-3}
OUT=${OUT:-docs/perf/gateway-runs.jsonl}
mkdir -p "$(dirname "$OUT")"
ulimit -n "$(ulimit -Hn)"
cargo build --release --locked --quiet --bin clawnode --bin clawnode-load
LOAD=target/release/clawnode-load
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill -- "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

emit() { # label json
  local line
  line=$(python3 -c 'import json,sys; d=json.loads(sys.argv[2]); d["label"]=sys.argv[1]; d["at"]=sys.argv[3]; print(json.dumps(d))' "$1" "$2" "$(date -u +%FT%TZ)")
  echo "$line" | tee -a "$OUT"
}
tree_rss_kib() { # pid: RSS of the process and all its descendants
  local total child
  total=$(awk '/VmRSS/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0)
  for child in $(pgrep -P "$1" || true); do
    total=$(( total + $(tree_rss_kib "$child") ))
  done
  echo "$total"
}

start_ours() { # state-dir port [config]
  target/release/clawnode run --gateway --state-dir "$1" --listen "127.0.0.1:$2" ${3:+--config "$3"} \
    >"$1.log" 2>&1 &
  pids+=($!); GW=$!
  for _ in $(seq 100); do grep -q "gateway listening" "$1.log" 2>/dev/null && return; sleep 0.1; done
  echo "our gateway did not start" >&2; exit 1
}

# ---- ours
port=18789
start_ours "$work/ours" $port
sleep 2
emit ours.idle_rss "{\"rss_kib\": $(tree_rss_kib $GW)}"
for r in $(seq "$RUNS"); do
  emit ours.handshakes "$($LOAD --url ws://127.0.0.1:$port --token-file "$work/ours/gateway.token" --mode handshakes --concurrency 64 --duration 10 --presence-rate 0)"
done
for r in $(seq "$RUNS"); do
  emit ours.presence200 "$($LOAD --url ws://127.0.0.1:$port --token-file "$work/ours/gateway.token" --operator-token-file "$work/ours/operator.token" --nodes 200 --duration 20 --beacon-interval 0 --stats-interval 0 --presence-rate 50)"
done
kill $GW; wait $GW 2>/dev/null || true

# 10,000 nodes held for 60 s; RSS sampled while they are connected.
start_ours "$work/ours10k" $port
base=$(tree_rss_kib $GW)
$LOAD --url ws://127.0.0.1:$port --token-file "$work/ours10k/gateway.token" --operator-token-file "$work/ours10k/operator.token" --nodes 10000 --duration 60 \
  --beacon-interval 60 --stats-interval 60 --presence-rate 10 >"$work/hold.json" &
loadpid=$!
sleep 40
held=$(tree_rss_kib $GW)
wait $loadpid
emit ours.hold10k "$(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); d["gateway_rss_idle_kib"]=int(sys.argv[2]); d["gateway_rss_10k_kib"]=int(sys.argv[3]); d["bytes_per_connection"]=(int(sys.argv[3])-int(sys.argv[2]))*1024//10000; print(json.dumps(d))' "$work/hold.json" "$base" "$held")"
kill $GW; wait $GW 2>/dev/null || true

# Reconnect storm: 10,000 agents (the agent's own backoff) cut off by a
# gateway restart. All come from 127.0.0.1 here, where a fleet comes from
# 10,000 addresses: the per-address pre-auth cap is raised to the total one
# so it does not stand in for 10,000 hosts' separate budgets.
cat >"$work/storm.toml" <<EOF
[gateway]
max_pending_handshakes_per_ip = 1024
EOF
start_ours "$work/storm" $port "$work/storm.toml"
$LOAD --url ws://127.0.0.1:$port --token-file "$work/storm/gateway.token" --mode storm --nodes 10000 \
  --presence-rate 0 --beacon-interval 60 --stats-interval 60 --storm-timeout 120 --report-every 1 \
  >"$work/storm.json" 2>"$work/storm.err" &
loadpid=$!
for _ in $(seq 600); do grep -q "connected 10000 " "$work/storm.err" 2>/dev/null && break; sleep 0.2; done
kill -9 $GW; wait $GW 2>/dev/null || true
sleep 2
start_ours "$work/storm" $port "$work/storm.toml"
wait $loadpid || true
emit ours.storm10k "$(cat "$work/storm.json")"
kill $GW; wait $GW 2>/dev/null || true

# ---- OpenClaw
peers=$(scripts/openclaw-peers.sh)
oc=$work/openclaw
mkdir -p "$oc"
token=bench-token-$RANDOM$RANDOM
printf '%s\n' "$token" >"$oc/token"; chmod 600 "$oc/token"
ocport=18800
# Its own session, so the cleanup stops its worker processes too.
setsid env -C "$oc" HOME="$oc" OPENCLAW_STATE_DIR="$oc/state" OPENCLAW_NO_AUTO_UPDATE=1 NO_COLOR=1 \
  OPENCLAW_GATEWAY_TOKEN="$token" "$peers/node" "$peers/openclaw.mjs" gateway run --allow-unconfigured \
  --auth token --port $ocport --bind loopback >"$oc/gw.log" 2>&1 &
OC=$!; pids+=("-$OC")
for _ in $(seq 180); do grep -q "\[gateway\] ready" "$oc/gw.log" 2>/dev/null && break; sleep 0.5; done
sleep 10
emit openclaw.idle_rss "{\"rss_kib\": $(tree_rss_kib $OC)}"
for r in $(seq "$RUNS"); do
  emit openclaw.handshakes "$($LOAD --url ws://127.0.0.1:$ocport --token-file "$oc/token" --mode handshakes --concurrency 64 --duration 10 --presence-rate 0)"
done
for r in $(seq "$RUNS"); do
  emit openclaw.presence200 "$($LOAD --url ws://127.0.0.1:$ocport --token-file "$oc/token" --nodes 200 --concurrency 16 --duration 20 --beacon-interval 0 --stats-interval 0 --presence-rate 50)"
done
emit openclaw.loaded_rss "{\"rss_kib\": $(tree_rss_kib $OC)}"
