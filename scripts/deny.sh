#!/usr/bin/env bash
# Supply-chain checks with cargo-deny (deny.toml): licenses, bans, sources
# and the RustSec advisories (vulnerable, unmaintained, unsound, yanked).
# cargo-deny is installed with `cargo install --locked` into the same cache
# as the packaging tools when missing.
#
# Advisories are checked against the live database on GitHub; where it
# cannot be fetched (machines that reach only package registries), against
# the plain-file snapshot in ../shared/rustsec-advisory-db beside the
# repository (CLAWNODE_ADVISORY_DB overrides the path), printing the
# snapshot's upstream commit and date. With neither, the script fails.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

CACHE="${CLAWNODE_TOOLS:-$HOME/.cache/clawnode-tools}"
DENY_VERSION=0.20.2
DENY="$CACHE/bin/cargo-deny"
if ! "$DENY" --version 2>/dev/null | grep -q "$DENY_VERSION"; then
    echo "== installing cargo-deny $DENY_VERSION into $CACHE"
    cargo install --quiet --locked --root "$CACHE" --version "$DENY_VERSION" cargo-deny
fi

"$DENY" check licenses bans sources

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# Yanked crates: cargo-deny 0.20.2 reads yanked flags only from cargo's
# local crates.io index cache ($CARGO_HOME/registry/index/*/.cache), online
# or --offline alike; it never asks the registry. With a Cargo.lock,
# `cargo fetch` and `cargo metadata` reuse those cache entries as they are
# ("user did not request update"), so a crate yanked since they were
# written would pass. `cargo update --dry-run` re-reads every locked crate's
# entry from crates.io (a package registry, reachable here) without touching
# Cargo.lock. That makes --offline below harmless to the yanked check; if
# the refresh fails, the yanked check cannot be trusted and the script fails.
# `-D index-failure` turns a crate missing from the cache (a warning by
# default: its yanked status unknown) into an error.
echo "== refreshing the crates.io index entries of Cargo.lock (yanked check)"
if ! cargo update --dry-run >"$tmp/index.log" 2>&1; then
    cat "$tmp/index.log" >&2
    echo "FAIL: the crates.io index could not be refreshed: yanked crates NOT checked" >&2
    exit 1
fi

# 1. The live database (a git repository on GitHub).
if "$DENY" check -D index-failure advisories 2>"$tmp/live.log"; then
    cat "$tmp/live.log" >&2
    echo "advisories ok (live RustSec database)"
    exit 0
elif ! grep -q "failed to fetch advisory database" "$tmp/live.log"; then
    cat "$tmp/live.log" >&2
    exit 1
fi
echo "NOTICE: the live RustSec database (github.com/RustSec/advisory-db) cannot be fetched from this machine"
grep -m1 "fatal:" "$tmp/live.log" || true

# 2. The snapshot. cargo-deny opens a database as a git repository named
# after its URL under db-path (advisory-db-3157b0e258782691 for the default
# URL), so the read-only shared copy is copied to a temporary git repository
# and cargo-deny runs --offline (no fetch) with a copy of deny.toml that
# adds db-path. The commit made here is dated today, which hides the
# snapshot's age from cargo-deny's staleness check: the upstream date from
# SNAPSHOT is printed instead, with a warning past cargo-deny's default
# maximum-db-staleness (90 days).
SNAP="${CLAWNODE_ADVISORY_DB:-$ROOT/../shared/rustsec-advisory-db}"
if [ ! -f "$SNAP/SNAPSHOT" ] || [ ! -d "$SNAP/crates" ]; then
    echo "FAIL: RustSec advisories NOT checked: the live database is unreachable and there is no snapshot at $SNAP (set CLAWNODE_ADVISORY_DB)" >&2
    exit 1
fi
if grep -q '^[[:space:]]*db-\(urls\|path\)' deny.toml; then
    echo "FAIL: deny.toml sets db-urls or db-path; scripts/deny.sh assumes the defaults" >&2
    exit 1
fi
snap_commit=$(sed -n 's/^upstream commit: *//p' "$SNAP/SNAPSHOT")
snap_date=$(sed -n 's/^upstream commit date: *//p' "$SNAP/SNAPSHOT")
if [ -z "$snap_commit" ] || ! snap_secs=$(date -d "$snap_date" +%s 2>/dev/null); then
    echo "FAIL: $SNAP/SNAPSHOT names no upstream commit and date" >&2
    exit 1
fi
snap_age=$(( ($(date +%s) - snap_secs) / 86400 ))
echo "== advisories against the snapshot $SNAP"
echo "   RustSec advisory-db upstream commit $snap_commit of $snap_date ($snap_age days old)"
if [ "$snap_age" -gt 90 ]; then
    echo "WARNING: the snapshot is more than 90 days old: advisories published after $snap_date are not checked"
fi

db="$tmp/advisory-dbs/advisory-db-3157b0e258782691"
mkdir -p "$tmp/advisory-dbs"
cp -r "$SNAP" "$db"
chmod -R u+w "$db"  # the shared copy has no write bits; git needs them here
(
    cd "$db"
    git init -q
    git add -A
    git -c user.name=snapshot -c user.email=snapshot@localhost -c commit.gpgsign=false \
        commit -q -m "snapshot of rustsec/advisory-db $snap_commit"
)
awk -v p="$tmp/advisory-dbs" '{ print } /^\[advisories\]/ { print "db-path = '\''" p "'\''" }' \
    deny.toml >"$tmp/deny.toml"
if [ "$(grep -c '^db-path' "$tmp/deny.toml")" != 1 ]; then
    echo "FAIL: could not add db-path under [advisories] in a copy of deny.toml" >&2
    exit 1
fi

cargo fetch --quiet  # --offline below also keeps cargo metadata offline
if ! "$DENY" --config "$tmp/deny.toml" --offline check -D index-failure advisories; then
    echo "FAIL: RustSec advisories (snapshot $snap_commit of $snap_date): see above" >&2
    exit 1
fi
echo "advisories ok (RustSec snapshot $snap_commit of $snap_date)"
