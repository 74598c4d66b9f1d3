#!/usr/bin/env bash
# The shopping-cart example as a visitor uses it: builds the example, starts it twice on free
# ports of 127.0.0.1 (with the default settings, and with a 2-second checkout expiry), runs the
# README's curl lines (curl.sh), the browser test in headless Chromium (cart.test.mjs) and the
# JSON API's errors (api.test.mjs) against them, and stops them. server.test.mjs starts
# instances of its own (a half-sent request during Ctrl-C, the header-read timeout, a failing
# SQLite store).
#
# Installs what is missing first: Debian's chromium (/usr/bin/chromium) and sqlite3, and
# playwright-core (npm ci, from package-lock.json). The tests talk to 127.0.0.1 only. The
# screenshots go to target/browser/.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
target_dir="${CARGO_TARGET_DIR:-$root/target}"
checkout_expiry_secs=2

for tool in cargo node npm curl; do
    command -v "$tool" >/dev/null || { echo "run.sh needs $tool" >&2; exit 1; }
done

missing=()
[[ -x /usr/bin/chromium ]] || missing+=(chromium)
command -v sqlite3 >/dev/null || missing+=(sqlite3)
if ((${#missing[@]})); then
    echo "-- installing ${missing[*]}"
    sudo=""
    [[ $(id -u) -eq 0 ]] || sudo="sudo"
    $sudo apt-get install -y "${missing[@]}" || { $sudo apt-get update && $sudo apt-get install -y "${missing[@]}"; }
fi
if [[ ! -d "$here/node_modules/playwright-core" ]]; then
    echo "-- installing playwright-core"
    (cd "$here" && npm ci --no-audit --no-fund)
fi

echo "-- building the example"
# With the SQLite driver: server.test.mjs runs the example on SQLite too.
(cd "$root" && cargo build --example shopping_cart --features sqlite)

work="$(mktemp -d)"
servers=()
stop() {
    for server in "${servers[@]}"; do
        # Ctrl-C is the example's graceful shutdown; anything left after 10 s is killed.
        kill -INT "$server" 2>/dev/null || continue
        for _ in $(seq 1 100); do kill -0 "$server" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$server" 2>/dev/null || true
        wait "$server" 2>/dev/null || true
    done
    rm -rf "$work"
}
trap stop EXIT
failed() {
    for log in "$work"/*.log; do
        echo "-- the output of the example ($(basename "$log" .log))" >&2
        cat "$log" >&2
    done
    exit 1
}

# start NAME [VAR=VALUE...]: starts the example with those settings (the others are the
# defaults, which the README's outputs assume) and sets `url` to its address. PORT=0: the system
# picks a free port, and the example prints the address it bound.
start() {
    local name="$1"
    shift
    env -u SESSION_STORE -u CART_EXPIRY_SECS -u CHECKOUT_EXPIRY_SECS -u HEADER_READ_TIMEOUT_SECS \
        PORT=0 NO_COLOR=1 "$@" \
        "$target_dir/debug/examples/shopping_cart" >"$work/$name.log" 2>&1 &
    servers+=($!)
    url=""
    for _ in $(seq 1 300); do
        url="$(grep -oE 'listening on http://127\.0\.0\.1:[0-9]+' "$work/$name.log" | grep -oE 'http://.*' || true)"
        [[ -n "$url" ]] && break
        kill -0 "${servers[-1]}" 2>/dev/null || failed
        sleep 0.1
    done
    [[ -n "$url" ]] || failed
    echo "example ($name) at $url"
}

echo "-- starting the example"
start default
base_url="$url"
start short-expiry CHECKOUT_EXPIRY_SECS="$checkout_expiry_secs"
short_expiry_url="$url"

# A proxy from the environment must not see the tests' requests.
export no_proxy="127.0.0.1" NO_PROXY="127.0.0.1"

echo "-- the README's curl lines"
"$here/curl.sh" "$base_url" || failed

echo "-- the browser test, the API's errors, the server"
BASE_URL="$base_url" SHORT_EXPIRY_URL="$short_expiry_url" \
    CHECKOUT_EXPIRY_SECS="$checkout_expiry_secs" OUTPUT_DIR="$target_dir/browser" \
    EXAMPLE="$target_dir/debug/examples/shopping_cart" \
    node --test --test-reporter=spec \
    "$here/cart.test.mjs" "$here/api.test.mjs" "$here/server.test.mjs" || failed
echo "screenshots: $target_dir/browser/cart.png, cart-390.png, checkout-expired.png"
