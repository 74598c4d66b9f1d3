#!/usr/bin/env bash
# Runs every fuzz target of fuzz/ for a fixed time and prints, for each, the executions, the
# rate and the crashes.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]     (default: 60 s, every target)
#
# Uses libFuzzer through `cargo fuzz` (installed with `cargo install cargo-fuzz` if missing).
# cargo fuzz passes `-Z` flags, which a stable toolchain accepts only with RUSTC_BOOTSTRAP=1:
# this script sets it. The crate forbids `unsafe`, so the targets run without a sanitizer by
# default, several times faster; FUZZ_SANITIZER=address adds AddressSanitizer (for the unsafe
# code of the dependencies). Memory is bounded by libFuzzer's -rss_limit_mb (and, with the
# sanitizer, -malloc_limit_mb): going past it is reported as a crash. See fuzz/README.md.
# New corpus entries go to fuzz/target/corpus/<target> (not committed); the committed seeds in
# fuzz/corpus/<target> are only read. A crash leaves its input in fuzz/artifacts/<target>/ and
# the command to replay it in the log named in the summary. A target's dictionary, if any, is
# fuzz/<target>.dict. Exits 1 if any target crashed.
set -euo pipefail

seconds=${1:-60}
shift || true
cd "$(dirname "$0")/../fuzz"

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "== installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi
export RUSTC_BOOTSTRAP=1
sanitizer=${FUZZ_SANITIZER:-none}

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(cargo fuzz list)
fi

echo "== building ${targets[*]} (sanitizer: $sanitizer)"
for target in "${targets[@]}"; do
    cargo fuzz build --sanitizer "$sanitizer" "$target"
done

summary=()
failed=0
for target in "${targets[@]}"; do
    scratch="target/corpus/$target"
    logs="target/fuzz-logs"
    mkdir -p "$scratch" "$logs" "artifacts/$target"
    log="$logs/$target.log"
    before=$(find "artifacts/$target" -type f | wc -l)
    echo "== $target: $seconds s (log: fuzz/$log)"
    status=0
    dict=()
    if [ -f "$target.dict" ]; then
        dict=(-dict="$PWD/$target.dict")
    fi
    cargo fuzz run --sanitizer "$sanitizer" "$target" "$scratch" "corpus/$target" -- \
        -max_total_time="$seconds" -print_final_stats=1 -rss_limit_mb=2048 \
        -malloc_limit_mb=1024 "${dict[@]}" >"$log" 2>&1 || status=$?
    after=$(find "artifacts/$target" -type f | wc -l)
    crashes=$((after - before))
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    took=$(sed -n 's/.*Done [0-9]* runs in \([0-9]*\) second.*/\1/p' "$log" | tail -1)
    coverage=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | cut -d' ' -f2 || true)
    if [ "$status" -ne 0 ] || [ "$crashes" -gt 0 ]; then
        failed=1
        grep -E "panicked at|ERROR: |SUMMARY: |Test unit written to" "$log" | head -5 || true
    fi
    summary+=("$(printf '%-18s %6s s %10s execs %8s/s  cov %-6s crashes %s  exit %s' \
        "$target" "${took:-<$seconds}" "${runs:-?}" "${rate:-?}" "${coverage:-?}" "$crashes" \
        "$status")")
done

echo "== summary"
printf '%s\n' "${summary[@]}"
exit "$failed"
