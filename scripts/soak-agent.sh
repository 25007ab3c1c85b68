#!/usr/bin/env bash
# Agent soak: our gateway and one agent on loopback (default intervals);
# the agent's RSS (VmRSS, Pss), CPU ticks (utime, stime; CLK_TCK per second)
# and voluntary context switches every 60 s, as CSV on stdout.
#
#   scripts/soak-agent.sh [minutes]     # default 60
set -euo pipefail
cd "$(dirname "$0")/.."
MINUTES=${1:-60}
cargo build --release --locked --quiet --bin clawnode
bin=$PWD/target/release/clawnode
work=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; rm -rf "$work"' EXIT
"$bin" run --gateway --state-dir "$work/gw" --listen 127.0.0.1:0 >"$work/gw.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do grep -q "gateway listening" "$work/gw.log" && break; sleep 0.1; done
addr=$(grep -o 'listen=[0-9.:]*' "$work/gw.log" | head -1 | cut -d= -f2)
"$bin" run --url "ws://$addr" --token-file "$work/gw/gateway.token" --state-dir "$work/agent" \
  >"$work/agent.log" 2>&1 &
agent=$!; pids+=($agent)
sleep 2
echo "minute,vmrss_kib,pss_kib,utime_ticks,stime_ticks,voluntary_ctxt,threads"
for m in $(seq 0 "$MINUTES"); do
  rss=$(awk '/VmRSS/ {print $2}' /proc/$agent/status)
  pss=$(awk '/^Pss:/ {print $2}' /proc/$agent/smaps_rollup)
  read -r ut st <<<"$(awk '{print $14, $15}' /proc/$agent/stat)"
  vc=$(awk '/^voluntary_ctxt_switches/ {print $2}' /proc/$agent/status)
  th=$(awk '/^Threads/ {print $2}' /proc/$agent/status)
  echo "$m,$rss,$pss,$ut,$st,$vc,$th"
  [ "$m" -lt "$MINUTES" ] && sleep 60
done
