#!/usr/bin/env bash
# User-space instructions per request of benches/http/bench_server.rs over loopback HTTP, counted by
# callgrind (BENCHMARKS.md, "Loopback HTTP"): repeatable whatever else the machine is doing,
# blind to the kernel's share. For each contender and route: the server runs under
# `valgrind --tool=callgrind`, gets one session per connection, 2 s of wrk as warm-up, then its
# counts are zeroed (callgrind_control -z), wrk drives it for 5 s, and the counts are dumped.
#
#   benches/http/callgrind.sh                         # bare raw controllers keyed axum_session
#   CONTENDERS="raw controllers" CONNECTIONS=16 benches/http/callgrind.sh
#   SESSIONS=large CONTENDERS="raw_redis redis" benches/http/callgrind.sh
#
# SESSIONS=small (the default) gives each session its cart alone; SESSIONS=large also 10 other
# namespaces of 1 KiB (POST /fill), as run.sh does.
#
# Uses the binary run.sh built (target/http-bench/bench_server), building it if missing, or the
# one BENCH_SERVER names (as in run.sh); the Redis contenders use REDIS_URL (as in run.sh). Needs
# valgrind and wrk. Only talks to 127.0.0.1; stops the server it started however it exits.
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
here=$root/benches/http
out=$root/target/http-bench/callgrind
bin=${BENCH_SERVER:-$root/target/http-bench/bench_server}
CONTENDERS=${CONTENDERS:-"bare raw controllers keyed axum_session"}
CONNECTIONS=${CONNECTIONS:-16}
SESSIONS=${SESSIONS:-small}
case $SESSIONS in
small | large) ;;
*) echo "SESSIONS is small or large, not $SESSIONS" >&2; exit 1 ;;
esac

for tool in valgrind callgrind_control callgrind_annotate wrk curl python3; do
    command -v "$tool" >/dev/null || { echo "missing: $tool" >&2; exit 1; }
done
mkdir -p "$out"
if [[ ! -x $bin ]]; then
    (cd "$root" && cargo build -q --release --example bench_server)
    cp "$root/target/release/examples/bench_server" "$bin"
fi

server_pid=""
cleanup() {
    if [[ -n $server_pid ]]; then
        kill "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
        server_pid=""
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "| contender | sessions | route | requests counted | instructions / request |"
echo "|---|---|---|---|---|"
for contender in $CONTENDERS; do
    for route in "POST /cart/add" "GET /cart"; do
        read -r method path <<<"$route"
        profile=$out/$contender-$(tr -c 'a-z\n' '_' <<<"${method,,}$path")
        if [[ $SESSIONS == large ]]; then
            profile=$profile-large
        fi
        port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
        url=http://127.0.0.1:$port
        rm -f "$profile.out"*
        CONTENDER=$contender PORT=$port valgrind --tool=callgrind \
            --callgrind-out-file="$profile.out" "$bin" >"$out/server.log" 2>&1 &
        server_pid=$!
        for _ in $(seq 1 150); do
            curl -s -o /dev/null "$url/cart" && break
            sleep 0.2
        done
        # One session per connection, as in run.sh.
        cookies=$out/cookies.txt
        : >"$cookies"
        for _ in $(seq 1 "$CONNECTIONS"); do
            cookie=$(curl -s -D - -o /dev/null -X POST "$url/cart/add" | tr -d '\r' |
                awk 'tolower($1) == "set-cookie:" { sub(/;.*/, "", $2); if ($2 !~ /=$/) print $2 }' |
                paste -sd ';' - | sed 's/;/; /g')
            echo "${cookie:-id=none}" >>"$cookies"
            if [[ $SESSIONS == large && $contender != bare ]]; then
                [[ $(curl -s -X POST -H "Cookie: $cookie" "$url/fill") == ok ]] || {
                    echo "$contender: POST /fill failed" >&2
                    exit 1
                }
            fi
        done
        wrk_run() {
            wrk -t 1 -c "$CONNECTIONS" -d "$1" -s "$here/sessions.lua" "$url" -- \
                "$method" "$path" "$cookies" 1 | grep '^RESULT'
        }
        wrk_run 2s >/dev/null
        callgrind_control -z "$server_pid" >/dev/null 2>&1
        line=$(wrk_run 5s)
        callgrind_control -d "$server_pid" >/dev/null 2>&1
        cleanup
        requests=$(sed -E 's/.*requests=([0-9]+).*/\1/' <<<"$line")
        # The dump made after zeroing: the numbered part file (the final one is the shutdown's).
        parts=("$profile.out".*)
        part=${parts[0]}
        total=$(callgrind_annotate "$part" | awk '/PROGRAM TOTALS/ { gsub(",", "", $1); print $1; exit }')
        echo "| $contender | $SESSIONS | $method $path | $requests | $((total / requests)) |"
    done
done
