#!/usr/bin/env bash
# Fuzzing with cargo-fuzz (libFuzzer + AddressSanitizer) on stable Rust.
#
#   fuzz/run.sh smoke            every target for 20 s over the committed
#                                corpus (in .ci/run); fails on any crash
#   fuzz/run.sh campaign [RUNS]  every target for RUNS executions (default
#                                10,000,000), then the corpus is minimised
#
# cargo-fuzz needs nightly-only rustc flags (-Zsanitizer); the stable
# toolchain ships the sanitizer runtimes and accepts the flags with
# RUSTC_BOOTSTRAP=1, which is how this runs on machines that have only
# stable. cargo-fuzz is installed with `cargo install --locked` into the
# same cache as the packaging tools when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

mode="${1:-smoke}"
CACHE="${CLAWNODE_TOOLS:-$HOME/.cache/clawnode-tools}"
FUZZ_VERSION=0.13.2
export PATH="$CACHE/bin:$PATH"
if ! cargo-fuzz --version 2>/dev/null | grep -q "$FUZZ_VERSION"; then
    echo "== installing cargo-fuzz $FUZZ_VERSION into $CACHE"
    cargo install --quiet --locked --root "$CACHE" --version "$FUZZ_VERSION" cargo-fuzz
fi
export RUSTC_BOOTSTRAP=1
TARGETS=(frame connect_params request config)

cargo fuzz build -O
for t in "${TARGETS[@]}"; do
    mkdir -p "fuzz/corpus/$t"
    case "$mode" in
        smoke)
            # A scratch copy, so a smoke run never grows the committed corpus.
            scratch=$(mktemp -d)
            cp -r "fuzz/corpus/$t/." "$scratch/"
            echo "== fuzz $t (20 s)"
            log=$(mktemp)
            if ! cargo fuzz run -O "$t" "$scratch" -- -max_total_time=20 -print_final_stats=1 >"$log" 2>&1; then
                tail -n 40 "$log"
                echo "fuzz target $t crashed (reproducer in fuzz/artifacts/$t)"
                exit 1
            fi
            grep -E "stat::number_of_executed_units|stat::peak_rss_mb" "$log" || true
            rm -rf "$scratch" "$log"
            ;;
        campaign)
            runs="${2:-10000000}"
            echo "== fuzz $t ($runs executions)"
            start=$(date +%s)
            cargo fuzz run -O "$t" -- -runs="$runs" -print_final_stats=1 2>&1 | tail -n 12
            echo "   $t: $(( $(date +%s) - start )) s"
            cargo fuzz cmin -O "$t" >/dev/null 2>&1
            echo "   $t corpus after cmin: $(ls "fuzz/corpus/$t" | wc -l) files"
            ;;
        *) echo "usage: $0 smoke|campaign [RUNS]" >&2; exit 2 ;;
    esac
done
