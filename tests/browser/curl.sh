#!/usr/bin/env bash
# Runs the README's curl lines (the console block of "## The example: a shopping cart") against
# the example at BASE_URL, one cookie jar for the whole flow, and compares every response with
# the output the README shows. `expires_in_seconds` may be a few seconds below the README's
# figure: time passes between the requests.
#
#   tests/browser/curl.sh http://127.0.0.1:PORT      (run.sh starts the example and calls this)
set -euo pipefail

base_url="${1:?usage: curl.sh http://127.0.0.1:PORT}"
[[ "$base_url" =~ ^http://127\.0\.0\.1:[0-9]+$ ]] || { echo "not a 127.0.0.1 address: $base_url" >&2; exit 2; }
readme="$(cd "$(dirname "$0")/../.." && pwd)/README.md"

# The commands and their outputs, alternating, from the section's console block.
mapfile -t lines < <(awk '
    /^## The example: a shopping cart/ { section = 1; next }
    /^## / { section = 0 }
    section && /^```console/ { block = 1; next }
    section && block && /^```/ { block = 0 }
    section && block { print }
' "$readme")
[[ ${#lines[@]} -ge 2 ]] || { echo "no console block in README.md's shopping-cart section" >&2; exit 1; }

# The jar is the README's file name `jar`, in a directory of our own.
jar_dir="$(mktemp -d)"
trap 'rm -rf "$jar_dir"' EXIT
cd "$jar_dir"

# Splits a response into its text without the expiry figures, and the figures.
shape() { sed -E 's/"expires_in_seconds":[0-9]+/"expires_in_seconds":N/g' <<<"$1"; }
figures() { grep -oE '"expires_in_seconds":[0-9]+' <<<"$1" | grep -oE '[0-9]+$' || true; }

ran=0
failed=0
for ((i = 0; i < ${#lines[@]}; i++)); do
    line="${lines[i]}"
    [[ "$line" == '$ curl '* ]] || { echo "unexpected line in the README's console block: $line" >&2; exit 1; }
    command="${line#\$ }"
    expected=""
    while ((i + 1 < ${#lines[@]})) && [[ "${lines[i + 1]}" != '$ '* ]]; do
        i=$((i + 1))
        expected+="${lines[i]}"
    done
    # Only the README's address is rewritten; a line aimed anywhere else fails.
    [[ "$command" == *'http://127.0.0.1:3000/'* ]] || { echo "not aimed at the example: $command" >&2; exit 1; }
    command="${command//http:\/\/127.0.0.1:3000/$base_url}"
    actual="$(bash -c "$command")"
    ran=$((ran + 1))

    ok=1
    [[ "$(shape "$actual")" == "$(shape "$expected")" ]] || ok=0
    mapfile -t want < <(figures "$expected")
    mapfile -t got < <(figures "$actual")
    [[ ${#want[@]} -eq ${#got[@]} ]] || ok=0
    for ((j = 0; ok && j < ${#want[@]}; j++)); do
        ((got[j] <= want[j] && got[j] >= want[j] - 5)) || ok=0
    done
    if ((ok)); then
        echo "ok   $line"
    else
        echo "FAIL $line"
        echo "     README: $expected"
        echo "     got:    $actual"
        failed=$((failed + 1))
    fi
done
echo "$ran curl lines, $failed failed"
((failed == 0))
