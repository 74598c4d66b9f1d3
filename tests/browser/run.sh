#!/usr/bin/env bash
# The shopping-cart example as a visitor uses it: builds the example, starts it on a free port of
# 127.0.0.1 with a 2-second checkout expiry, runs the README's curl lines (curl.sh) and the
# browser test in headless Chromium (cart.test.mjs) against it, and stops it.
#
# Installs what is missing first: Debian's chromium (/usr/bin/chromium) and playwright-core
# (npm ci, from package-lock.json). The tests talk to 127.0.0.1 only. The screenshots go to
# target/browser/.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
target_dir="${CARGO_TARGET_DIR:-$root/target}"
checkout_expiry_secs=2

for tool in cargo node npm curl; do
    command -v "$tool" >/dev/null || { echo "run.sh needs $tool" >&2; exit 1; }
done

if [[ ! -x /usr/bin/chromium ]]; then
    echo "-- installing chromium"
    sudo=""
    [[ $(id -u) -eq 0 ]] || sudo="sudo"
    $sudo apt-get install -y chromium || { $sudo apt-get update && $sudo apt-get install -y chromium; }
fi
if [[ ! -d "$here/node_modules/playwright-core" ]]; then
    echo "-- installing playwright-core"
    (cd "$here" && npm ci --no-audit --no-fund)
fi

echo "-- building the example"
(cd "$root" && cargo build --example shopping_cart)

work="$(mktemp -d)"
server=""
stop() {
    if [[ -n "$server" ]] && kill -0 "$server" 2>/dev/null; then
        # Ctrl-C is the example's graceful shutdown; anything left after 10 s is killed.
        kill -INT "$server" 2>/dev/null || true
        for _ in $(seq 1 100); do kill -0 "$server" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$server" 2>/dev/null || true
        wait "$server" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap stop EXIT
failed() {
    echo "-- the example's output" >&2
    cat "$work/server.log" >&2
    exit 1
}

echo "-- starting the example"
# PORT=0: the system picks a free port, and the example prints the address it bound. Every
# other setting is the default, which the README's outputs assume.
env -u SESSION_STORE -u CART_EXPIRY_SECS PORT=0 CHECKOUT_EXPIRY_SECS="$checkout_expiry_secs" \
    NO_COLOR=1 "$target_dir/debug/examples/shopping_cart" >"$work/server.log" 2>&1 &
server=$!
base_url=""
for _ in $(seq 1 300); do
    base_url="$(grep -oE 'listening on http://127\.0\.0\.1:[0-9]+' "$work/server.log" | grep -oE 'http://.*' || true)"
    [[ -n "$base_url" ]] && break
    kill -0 "$server" 2>/dev/null || failed
    sleep 0.1
done
[[ -n "$base_url" ]] || failed
echo "example at $base_url"

# A proxy from the environment must not see the tests' requests.
export no_proxy="127.0.0.1" NO_PROXY="127.0.0.1"

echo "-- the README's curl lines"
"$here/curl.sh" "$base_url" || failed

echo "-- the browser test"
BASE_URL="$base_url" CHECKOUT_EXPIRY_SECS="$checkout_expiry_secs" OUTPUT_DIR="$target_dir/browser" \
    node --test --test-reporter=spec "$here/cart.test.mjs" || failed
echo "screenshots: $target_dir/browser/cart.png, checkout-expired.png"
