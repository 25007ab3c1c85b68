#!/usr/bin/env bash
# Supply-chain checks with cargo-deny (deny.toml): licenses, bans, sources
# and the RustSec advisories (vulnerable, unmaintained, unsound, yanked).
# cargo-deny is installed with `cargo install --locked` into the same cache
# as the packaging tools when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE="${CLAWNODE_TOOLS:-$HOME/.cache/clawnode-tools}"
DENY_VERSION=0.20.2
DENY="$CACHE/bin/cargo-deny"
if ! "$DENY" --version 2>/dev/null | grep -q "$DENY_VERSION"; then
    echo "== installing cargo-deny $DENY_VERSION into $CACHE"
    cargo install --quiet --locked --root "$CACHE" --version "$DENY_VERSION" cargo-deny
fi

"$DENY" check licenses bans sources

# The advisory database is a git repository on GitHub. Where it cannot be
# fetched (machines that reach only package registries), say so plainly:
# the check did not run, it did not pass.
log=$(mktemp)
if "$DENY" check advisories 2>"$log"; then
    echo "advisories ok"
elif grep -q "failed to fetch advisory database" "$log"; then
    echo "NOTICE: RustSec advisories NOT checked: the advisory database (github.com/RustSec/advisory-db) is unreachable from this machine"
    grep -m1 "fatal:" "$log" || true
else
    cat "$log" >&2
    exit 1
fi
