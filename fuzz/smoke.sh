#!/usr/bin/env bash
# Fuzz smoke test (CI, .ci/run): builds the cargo-fuzz targets and runs each
# for a short time over the committed corpus (fuzz/corpus/<target>); a crash,
# a leak or a timeout fails the run, and the input is left in
# fuzz/artifacts/<target>/. The long campaign and its figures: docs/RELIABILITY.md.
#
# cargo-fuzz needs unstable rustc flags (-Zsanitizer, sanitizer coverage).
# Only stable Rust is installed, so RUSTC_BOOTSTRAP=1 unlocks them; the
# stable toolchain ships the AddressSanitizer runtime, so ASan is used when
# it is there (-s none otherwise).
#
#   FUZZ_SECONDS   seconds per target (default 25)
#   CLAWNODE_TOOLS_CACHE   where cargo-fuzz is installed (as packaging/build.sh)
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE="${CLAWNODE_TOOLS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/clawnode-tools}"
CARGO_FUZZ_VERSION=0.13.2
SECONDS_PER_TARGET="${FUZZ_SECONDS:-25}"
export PATH="$CACHE/bin:$PATH"
export RUSTC_BOOTSTRAP=1

if ! cargo-fuzz --version 2>/dev/null | grep -qF "$CARGO_FUZZ_VERSION"; then
    echo "== installing cargo-fuzz $CARGO_FUZZ_VERSION into $CACHE"
    cargo install --quiet --locked --root "$CACHE" --version "$CARGO_FUZZ_VERSION" cargo-fuzz
fi

sysroot="$(rustc --print sysroot)"
host="$(rustc -vV | sed -n 's/^host: //p')"
if compgen -G "$sysroot/lib/rustlib/$host/lib/librustc-*_rt.asan.a" >/dev/null; then
    sanitizer=address
else
    sanitizer=none
fi

echo "== cargo fuzz build (sanitizer: $sanitizer, $(rustc --version))"
cargo fuzz build --sanitizer "$sanitizer"

scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
for target in $(cargo fuzz list); do
    corpus="fuzz/corpus/$target"
    [ -d "$corpus" ] || { echo "no corpus for $target: $corpus" >&2; exit 1; }
    echo "== fuzz $target: ${SECONDS_PER_TARGET}s over $(ls "$corpus" | wc -l) corpus files"
    # New inputs go to a scratch dir: the committed corpus stays as it is.
    mkdir -p "$scratch/$target"
    if ! cargo fuzz run --sanitizer "$sanitizer" "$target" "$scratch/$target" "$corpus" -- \
        -max_total_time="$SECONDS_PER_TARGET" -timeout=10 -print_final_stats=1 \
        >"$scratch/$target.log" 2>&1; then
        grep -vE '^#[0-9]+' "$scratch/$target.log" | tail -n 60 >&2
        echo "FAIL: fuzz target $target crashed; input in fuzz/artifacts/$target/" >&2
        exit 1
    fi
    grep -E 'stat::(number_of_executed_units|average_exec_per_sec)' "$scratch/$target.log" | sed 's/^/    /'
done
echo "== fuzz smoke: no crash"
