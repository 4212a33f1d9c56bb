#!/usr/bin/env bash
# Runs every fuzz target for $FUZZ_SECONDS (default 30) from its seeds;
# fails on the first crash. Prints the executions per target. Needs the
# nightly toolchain and cargo-fuzz (.ci/run installs it).
set -euo pipefail
cd "$(dirname "$0")"
seconds="${FUZZ_SECONDS:-30}"
cargo +nightly fuzz build
for target in $(cargo +nightly fuzz list); do
    corpus="corpus/$target"
    mkdir -p "$corpus"
    cp -n seeds/"$target"/* "$corpus"/ 2>/dev/null || true
    log="$(mktemp)"
    if ! cargo +nightly fuzz run "$target" "$corpus" -- \
        -max_total_time="$seconds" -rss_limit_mb=2048 -max_len=65536 >"$log" 2>&1; then
        tail -n 60 "$log"
        echo "fuzz: $target crashed (the input is under fuzz/artifacts/$target)"
        exit 1
    fi
    runs="$(grep -Eo 'Done [0-9]+ runs' "$log" | tail -n 1 | grep -Eo '[0-9]+')"
    echo "fuzz: $target: ${runs:-?} executions in ${seconds} s, no crash"
    rm -f "$log"
done
