#!/usr/bin/env bash
# The installed unit under a real systemd: boots a root file system with
# clawnode installed as a throw-away systemd-nspawn container (an overlay
# on it whose writes go to a tmpfs), runs clawnode.service there as an
# agent against a gateway on the host, then as a gateway, and reads what
# systemd says (state, status text, watchdog, user) and what the journal
# holds.
#   systemd-test.sh [LOWER]
# LOWER is that root (default /): install-test.sh passes its throw-away
# install root. Neither LOWER nor the host is written to. Needs root and
# systemd-nspawn (package systemd-container).
# Prints one line per check and "N passed, N failed".
set -uo pipefail
# shellcheck source=SCRIPTDIR/throwaway-root.sh
. "$(dirname "$0")/throwaway-root.sh"

LOWER="${1:-/}"
BIN=/usr/bin/clawnode        # inside the container
HOST_BIN="${LOWER%/}$BIN"    # the same file, run on the host
passed=0
failed=0
ok() { echo "ok   - $1"; passed=$((passed + 1)); }
fail() { echo "FAIL - $1"; [ -n "${2:-}" ] && echo "$2" | head -30 | sed 's/^/       /'; failed=$((failed + 1)); }
expect() { # description, command...
    local what="$1" out
    shift
    if out=$("$@" 2>&1); then ok "$what"; else fail "$what" "$out"; fi
}

if [ "$(id -u)" -ne 0 ] || ! command -v systemd-nspawn >/dev/null || [ ! -x "$HOST_BIN" ]; then
    echo "systemd-test: needs root, systemd-nspawn and the installed package; skipped"
    echo "0 passed, 0 failed"
    exit 0
fi

WORK=$(mktemp -d /tmp/clawnode-systemd-test.XXXXXX)
UPPER="$WORK/upper-mnt"
ROOT="$WORK/root"
NSPAWN_PID=
GW_PID=
cleanup() {
    [ -n "$NSPAWN_PID" ] && kill "$NSPAWN_PID" 2>/dev/null && sleep 2
    [ -n "$NSPAWN_PID" ] && kill -9 "$NSPAWN_PID" 2>/dev/null
    [ -n "$GW_PID" ] && kill "$GW_PID" 2>/dev/null
    release_dir "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# A container root: LOWER read-only under an overlay, writes in a tmpfs;
# /dev, /proc, /sys, /run and /tmp emptied (nspawn mounts its own).
prepare_root() {
    throwaway_root "$LOWER" "$UPPER" "$ROOT" || return 1
    for d in dev proc sys run tmp; do
        find "$ROOT/$d" -mindepth 1 -maxdepth 1 -exec rm -rf {} + 2>/dev/null
    done
    rm -f "$ROOT/etc/machine-id" && tr -d - </proc/sys/kernel/random/uuid >"$ROOT/etc/machine-id"
    mkdir -p "$ROOT/probe" && chmod 755 "$ROOT/probe"
    # A 3 s watchdog, so that the probe (7 s after READY) sees whether the
    # pings keep the service alive; the packaged unit says 30 s.
    mkdir -p "$ROOT/etc/systemd/system/clawnode.service.d"
    printf '[Service]\nWatchdogSec=3\n' >"$ROOT/etc/systemd/system/clawnode.service.d/test-watchdog.conf"
    # A small target instead of the machine's default: only what we test.
    cat >"$ROOT/etc/systemd/system/clawnode-test.target" <<'EOF'
[Unit]
Description=clawnode under systemd (test)
Requires=basic.target
After=basic.target
Wants=clawnode.service clawnode-probe.service
EOF
    # Runs once clawnode.service is started, i.e. once it sent READY=1.
    cat >"$ROOT/etc/systemd/system/clawnode-probe.service" <<'EOF'
[Unit]
Description=report clawnode's state (test)
After=clawnode.service
[Service]
Type=oneshot
ExecStart=/bin/sh -c 'sleep 7; systemctl show clawnode.service -p ActiveState -p SubState -p StatusText -p WatchdogUSec -p User -p NRestarts >/probe/status.tmp && mv /probe/status.tmp /probe/status'
EOF
}

# Boots the container in the background; waits for the probe's report.
boot() {
    rm -f "$ROOT/probe/status"
    timeout 120 systemd-nspawn -D "$ROOT" --register=no --keep-unit --link-journal=no --quiet \
        -b -- systemd.unit=clawnode-test.target >"$WORK/console.log" 2>&1 &
    NSPAWN_PID=$!
    for _ in $(seq 1 90); do
        [ -s "$ROOT/probe/status" ] && return 0
        sleep 1
    done
    return 1
}

# Powers the container off (nspawn turns SIGTERM into a clean shutdown).
shutdown_container() {
    kill -TERM "$NSPAWN_PID" 2>/dev/null
    for _ in $(seq 1 30); do
        kill -0 "$NSPAWN_PID" 2>/dev/null || break
        sleep 1
    done
    NSPAWN_PID=
}

status_is() { grep -Fxq "$1" "$ROOT/probe/status" || { cat "$ROOT/probe/status"; return 1; }; }
journal() { journalctl -D "$ROOT/var/log/journal" -u clawnode.service "$@" 2>/dev/null; }

prepare_root || { fail "prepare the container root (overlay on tmpfs)"; echo "$passed passed, $failed failed"; exit 1; }

# --- 1. The agent, against a gateway on the host ------------------------------
GW_PORT=$(free_port)
"$HOST_BIN" run --gateway --listen "127.0.0.1:$GW_PORT" --state-dir "$WORK/gw" --config /dev/null \
    >"$WORK/gateway.log" 2>&1 &
GW_PID=$!
for _ in $(seq 1 50); do [ -s "$WORK/gw/gateway.token" ] && break; sleep 0.1; done
# The group as the container knows it (the host may have no such group).
clawnode_gid=$(chroot "$LOWER" getent group clawnode | cut -d: -f3)
install -m 0640 -g "${clawnode_gid:-clawnode}" "$WORK/gw/gateway.token" "$ROOT/etc/clawnode/token"
cat >"$ROOT/etc/clawnode/clawnode.toml" <<EOF
url = "ws://127.0.0.1:$GW_PORT"
token_file = "/etc/clawnode/token"
beacon_interval_secs = 5
EOF

if boot; then
    ok "agent: systemd started clawnode.service (READY=1 received)"
    expect "agent: active (running) as user clawnode" status_is "ActiveState=active"
    expect "agent: sub-state running" status_is "SubState=running"
    expect "agent: runs as clawnode" status_is "User=clawnode"
    expect "agent: watchdog armed (3 s in this test)" status_is "WatchdogUSec=3s"
    expect "agent: fed by the main loop: no restart 7 s into a 3 s watchdog" status_is "NRestarts=0"
    expect "agent: status says where it is connected" \
        grep -Eq "^StatusText=connected to ws://127.0.0.1:$GW_PORT as [0-9a-f-]{36}$" "$ROOT/probe/status"
    instance=$(sed -n 's/^StatusText=connected to .* as //p' "$ROOT/probe/status")
    expect "agent: its row is in the gateway's presence list, with host facts read under the sandbox" sh -c "
        '$HOST_BIN' presence --config /dev/null --url ws://127.0.0.1:$GW_PORT --token-file '$WORK/gw/operator.token' --json |
        python3 -c 'import json,sys
rows=[r for r in json.load(sys.stdin) if r.get(\"instanceId\")==\"$instance\"]
assert rows, \"no row for $instance\"
r=rows[0]
assert r[\"mode\"]==\"node\" and r[\"platform\"].startswith(\"linux \") and r.get(\"modelIdentifier\") and r.get(\"host\"), r
print(r)'"
else
    fail "agent: clawnode.service did not become ready within 90 s" "$(tail -30 "$WORK/console.log")"
fi
shutdown_container
expect "agent: logs are in the journal with INSTANCE_ID, GATEWAY_URL and CONN_ID fields" sh -c "
    journalctl -D '$ROOT/var/log/journal' -u clawnode.service -o json 2>/dev/null | python3 -c 'import json,sys
es=[json.loads(l) for l in sys.stdin]
c=[e for e in es if e.get(\"MESSAGE\",\"\").startswith(\"connected to \")]
assert c, [e.get(\"MESSAGE\") for e in es]
e=c[0]
assert e[\"SYSLOG_IDENTIFIER\"]==\"clawnode\" and e[\"_TRANSPORT\"]==\"journal\", e
assert e[\"INSTANCE_ID\"]==\"$instance\" and e[\"GATEWAY_URL\"]==\"ws://127.0.0.1:$GW_PORT\" and e[\"CONN_ID\"], e'"
expect "agent: stopped cleanly on shutdown (SIGTERM, exit 0)" sh -c "
    journalctl -D '$ROOT/var/log/journal' -u clawnode.service -o cat 2>/dev/null | grep -q 'agent stopped' &&
    ! journalctl -D '$ROOT/var/log/journal' -u clawnode.service -o cat 2>/dev/null | grep -Eq 'code=exited, status=[1-9]|Failed with result|watchdog timeout'"

# --- 2. The same unit promoted to gateway --------------------------------------
GW2_PORT=$(free_port)
cat >"$ROOT/etc/clawnode/clawnode.toml" <<EOF
token_file = "/etc/clawnode/token"

[gateway]
enabled = true
listen = "127.0.0.1:$GW2_PORT"
EOF
if boot; then
    ok "gateway: systemd started clawnode.service (READY=1 received)"
    expect "gateway: active (running)" status_is "ActiveState=active"
    expect "gateway: status counts entries and connections" \
        grep -Eq '^StatusText=gateway: [0-9]+ (entry|entries), [0-9]+ connections?$' "$ROOT/probe/status"
    # /etc/clawnode/token is the join token (role node only): an operator
    # uses the operator token the service generated in its state directory.
    expect "gateway: generated its operator token, 0600, owned by clawnode" sh -c "
        [ \"\$(stat -c %a '$ROOT/var/lib/clawnode/operator.token')\" = 600 ] &&
        [ \"\$(stat -c %u '$ROOT/var/lib/clawnode/operator.token')\" = \"\$(chroot '$LOWER' id -u clawnode)\" ]"
    expect "gateway: refuses the join token as an operator, naming the operator token" sh -c "
        '$HOST_BIN' presence --config /dev/null --url ws://127.0.0.1:$GW2_PORT --token-file '$WORK/gw/gateway.token' 2>&1 |
        grep -q 'grants role node only; operators use /var/lib/clawnode/operator.token'"
    expect "gateway: answers system-presence with its self row" sh -c "
        '$HOST_BIN' presence --config /dev/null --url ws://127.0.0.1:$GW2_PORT --token-file '$ROOT/var/lib/clawnode/operator.token' | grep -q ' gateway '"
else
    fail "gateway: clawnode.service did not become ready within 90 s" "$(tail -30 "$WORK/console.log")"
fi
shutdown_container

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
