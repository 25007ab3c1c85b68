#!/usr/bin/env bash
# Builds the release binary and both packages into target/packages/:
#   clawnode_<version>-1_<arch>.deb   (cargo-deb)
#   clawnode-<version>-1.<arch>.rpm   (cargo-generate-rpm)
# The two cargo tools are installed with `cargo install --locked` into a
# cache (CLAWNODE_TOOLS_CACHE, default ~/.cache/clawnode-tools) when missing;
# dpkg-dev (for the shared-library dependencies) comes from apt.
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE="${CLAWNODE_TOOLS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/clawnode-tools}"
CARGO_DEB_VERSION=3.8.0
CARGO_GENERATE_RPM_VERSION=0.21.1
export PATH="$CACHE/bin:$PATH"

need_tool() { # name version
    if ! "$1" --version 2>/dev/null | grep -qF "$2"; then
        echo "== installing $1 $2 into $CACHE"
        cargo install --quiet --locked --root "$CACHE" --version "$2" "$1"
    fi
}
need_tool cargo-deb "$CARGO_DEB_VERSION"
need_tool cargo-generate-rpm "$CARGO_GENERATE_RPM_VERSION"

if ! command -v dpkg-shlibdeps >/dev/null; then
    echo "== installing dpkg-dev (dpkg-shlibdeps)"
    apt-get update -qq && apt-get install -y -qq dpkg-dev >/dev/null
fi

echo "== release build"
cargo build --release --locked

out=target/packages
rm -rf "$out"
mkdir -p "$out/man"
echo "== man pages"
cargo run --quiet --release --locked --example man -- "$out/man"
gzip -9n "$out"/man/*.1

echo "== .deb"
cargo deb --no-build --output "$out/" >/dev/null
echo "== .rpm"
cargo generate-rpm --output "$out/" >/dev/null

ls -l "$out"/*.deb "$out"/*.rpm
