#!/usr/bin/env bash
# Instructions per request of every benchmarked case, under callgrind: repeatable where wall
# time on a shared machine is not. Needs valgrind. See BENCHMARKS.md.
#
#   benches/callgrind.sh                 # every case; profiles are kept in target/callgrind/
#   benches/callgrind.sh change_one_key  # only the cases whose name contains the word
#
# Each case runs the bench binary's driver (`requests --drive CONTENDER WORKLOAD SIZE OTHERS N`),
# which seeds the session as the benchmark does and then sends N requests; only the requests are
# counted (`--toggle-collect` on the driver's `one_request`).
set -euo pipefail
cd "$(dirname "$0")/.."

filter="${1:-}"
cargo bench --no-run --bench requests 2>/dev/null
bin=$(cargo bench --no-run --bench requests --message-format=json 2>/dev/null |
    sed -n 's/.*"executable":"\([^"]*requests[^"]*\)".*/\1/p' | tail -1)
out=target/callgrind
mkdir -p "$out"

contenders=(raw_tower_sessions raw_typed controllers keyed controllers_merging keyed_merging axum_session)
cases=()
for workload in change_one_key read_only; do
    for size in 100B 10KiB 1MiB; do
        for others in 1 50; do cases+=("$workload $size $others"); done
    done
done
for others in 1 50; do cases+=("expired 10KiB $others"); done

printf '| workload | namespace | others | raw (Ir/request) | raw_typed | controllers | keyed | controllers_merging | keyed_merging | axum_session | keyed / raw_typed |\n'
printf '|---|---|---|---|---|---|---|---|---|---|---|---|\n'
for case in "${cases[@]}"; do
    [[ -z "$filter" || "$case" == *"$filter"* ]] || continue
    read -r workload size others <<<"$case"
    case $size in 1MiB) n=4 ;; 10KiB) n=100 ;; *) n=400 ;; esac
    declare -A ir=()
    for contender in "${contenders[@]}"; do
        file="$out/${workload}_${size}_${others}_${contender}.out"
        valgrind --tool=callgrind --toggle-collect='*one_request*' --callgrind-out-file="$file" \
            "$bin" --drive "$contender" "$workload" "$size" "$others" "$n" >/dev/null 2>&1
        total=$(sed -n 's/^summary: //p' "$file")
        ir[$contender]=$((total / n))
    done
    raw=${ir[raw_tower_sessions]}
    ratio() { awk -v a="$1" -v b="${2:-$raw}" 'BEGIN { printf "%.3f", a / b }'; }
    printf '| %s | %s | %s | %d | %s | %s | %s | %s | %s | %s | %s |\n' \
        "$workload" "$size" "$others" "$raw" "$(ratio "${ir[raw_typed]}")" \
        "$(ratio "${ir[controllers]}")" "$(ratio "${ir[keyed]}")" \
        "$(ratio "${ir[controllers_merging]}")" "$(ratio "${ir[keyed_merging]}")" \
        "$(ratio "${ir[axum_session]}")" "$(ratio "${ir[keyed]}" "${ir[raw_typed]}")"
done
