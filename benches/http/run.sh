#!/usr/bin/env bash
# The loopback HTTP load test (BENCHMARKS.md, "Loopback HTTP").
#
# For every contender and every connection count it starts a server on a free 127.0.0.1 port,
# gives each connection a session of its own (with one item in its cart), warms up, drives the
# server with wrk for a fixed time, reads requests/s and the p50/p99 latency, and the CPU time
# the server spent meanwhile (from /proc), stops the server, and at the end writes one markdown
# table (stdout and target/http-bench/results.md) with each row's requests/s and CPU time per
# request over raw tower-sessions' at the same workload and connection count. The CPU time per
# request is the steadier of the two on a machine that other processes also load. For the Redis
# contenders a second table splits it: the server's time in user space and in the kernel, and
# the Redis server's own time per request (when REDIS_URL's server runs on this machine and
# redis-cli reaches it: its process id comes from INFO).
#
# Contenders: benches/http/bench_server.rs with
# CONTENDER=bare|raw|controllers|embedded|keyed|axum_session|raw_redis|redis, and the seed, django-spire's SessionController in the Django project of benches/http/seed,
# served by gunicorn. Workloads: `add` (POST /cart/add: one more apple in the cart, the session
# is saved) and `read` (GET /cart: the quantity, nothing saved). Sessions: `small` (the cart alone,
# about 60 bytes) and `large` (the cart and 10 other namespaces of 1 KiB, stored by POST /fill
# when the session is made; not for the seed). The Redis contenders (raw_redis: raw on
# tower-sessions-redis-store; redis: the controllers on stores::RedisStore) use the Redis at
# REDIS_URL (redis://127.0.0.1:6379 by default) and are compared with raw_redis, the others with raw.
#
# It installs what it lacks: wrk (apt-get) and, in target/http-bench/venv, the pinned Python
# packages of benches/http/seed/requirements.txt (pip). It only talks to 127.0.0.1, and every
# server it started is stopped when it exits, however it exits.
#
# Settings (environment):
#   DURATION=10        seconds measured per run
#   WARMUP=3           seconds of load before each measured run, not counted
#   CONNECTIONS="1 16 64"
#   CONTENDERS="bare raw controllers embedded keyed axum_session raw_redis redis seed"
#   WORKLOADS="add read"
#   SESSIONS="small large"
#   ROUNDS=1           repeat the whole matrix; the table shows each figure's median
#   SEED_THREADS=4     gunicorn's threads in its one worker process (see seed/seedbench/settings.py)
#   PIN=auto           auto: with 2 or more CPUs, wrk on CPU 0 and the server on CPU 1
#                      (taskset); 0: no pinning
#   NICE=-20           the niceness of wrk and the servers, and of this script's autogroup
#                      (restored at exit), so that other processes of the machine take as little
#                      of their cores as the scheduler allows (needs root; 0 to leave it)
#   REV=               empty: build the working tree; a git revision: build that commit,
#                      exported to target/http-bench/tree (so others' uncommitted edits to src/
#                      are not measured)
#   BENCH_SERVER=      a bench_server binary built before (by this script, or with
#                      `cargo build --release --example bench_server`), used instead of building
#                      one: two builds measured in turn, without building between runs
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
here=$root/benches/http
out=$root/target/http-bench
venv=$out/venv

DURATION=${DURATION:-10}
WARMUP=${WARMUP:-3}
CONNECTIONS=${CONNECTIONS:-"1 16 64"}
CONTENDERS=${CONTENDERS:-"bare raw controllers embedded keyed axum_session raw_redis redis seed"}
WORKLOADS=${WORKLOADS:-"add read"}
SESSIONS=${SESSIONS:-"small large"}
ROUNDS=${ROUNDS:-1}
SEED_THREADS=${SEED_THREADS:-4}
PIN=${PIN:-auto}
NICE=${NICE:--20}
REV=${REV:-}
BENCH_SERVER=${BENCH_SERVER:-}

mkdir -p "$out"
started=$(date -u +%s)
log() { echo "[http-bench $(date -u +%H:%M:%S)] $*" >&2; }

# ---- stop every server we started, whatever the exit ----
server_pid=""
autogroup_nice=""
cleanup() {
    if [[ -n $server_pid ]]; then
        kill "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
        server_pid=""
    fi
}
on_exit() {
    cleanup
    if [[ -n $autogroup_nice ]]; then
        echo "$autogroup_nice" >/proc/self/autogroup 2>/dev/null || true
    fi
}
trap on_exit EXIT
trap 'exit 130' INT TERM

# ---- tools ----
if ! command -v wrk >/dev/null; then
    log "installing wrk (apt-get)"
    apt-get update -qq
    apt-get install -y -qq wrk >/dev/null
fi
for tool in curl python3 taskset; do
    command -v "$tool" >/dev/null || { log "missing: $tool"; exit 1; }
done

# The seed's Python side: a venv under target/, (re)installed when the pins change.
if [[ " $CONTENDERS " == *" seed "* ]]; then
    if ! cmp -s "$here/seed/requirements.txt" "$venv/requirements.txt" 2>/dev/null; then
        log "installing Django, django-spire and gunicorn into $venv"
        rm -rf "$venv"
        python3 -m venv "$venv"
        "$venv/bin/pip" install -q --disable-pip-version-check --no-deps \
            -r "$here/seed/requirements.txt"
        cp "$here/seed/requirements.txt" "$venv/requirements.txt"
    fi
fi

# ---- the Rust server, in release ----
if [[ -n $BENCH_SERVER ]]; then
    log "using the prebuilt $BENCH_SERVER"
    built="prebuilt $BENCH_SERVER"
    cp "$BENCH_SERVER" "$out/bench_server.next"
elif [[ -n $REV ]]; then
    rev=$(git -C "$root" rev-parse --short "$REV")
    log "building bench_server at $rev (exported to $out/tree)"
    rm -rf "$out/tree"
    mkdir -p "$out/tree"
    git -C "$root" archive "$REV" | tar -x -C "$out/tree"
    # The same target directory: the dependencies are not built again.
    (cd "$out/tree" && CARGO_TARGET_DIR=$root/target cargo build -q --release --example bench_server)
    built="commit $rev"
else
    rev=$(git -C "$root" rev-parse --short HEAD)
    log "building bench_server from the working tree"
    (cd "$root" && cargo build -q --release --example bench_server)
    built="working tree on $rev"
    if ! git -C "$root" diff --quiet HEAD -- src Cargo.toml benches/Cargo.toml benches/http/bench_server.rs; then
        built="$built, with uncommitted changes to src/, the manifests or bench_server.rs"
    fi
fi
if [[ -n $BENCH_SERVER ]]; then
    mv "$out/bench_server.next" "$out/bench_server"
else
    cp "$root/target/release/examples/bench_server" "$out/bench_server"
fi

# ---- priority and pinning: one core for the load generator, one for the server ----
client_pin=()
server_pin=()
if [[ $NICE != 0 ]]; then
    if [[ $(nice -n "$NICE" nice 2>/dev/null) == "$NICE" ]]; then
        client_pin=(nice -n "$NICE")
        server_pin=(nice -n "$NICE")
        # With the kernel's autogroups, a process's niceness only weighs against its own session's
        # processes; the session's group as a whole competes at the group's niceness.
        if [[ $(cat /proc/sys/kernel/sched_autogroup_enabled 2>/dev/null) == 1 ]]; then
            autogroup_nice=$(sed 's/.* nice //' /proc/self/autogroup)
            echo "$NICE" >/proc/self/autogroup
        fi
    else
        log "cannot run at niceness $NICE (not root?): running at the default"
        NICE=0
    fi
fi
if [[ $PIN == auto && $(nproc) -ge 2 ]]; then
    client_pin+=(taskset -c 0)
    server_pin+=(taskset -c 1)
    pinning="wrk on CPU 0, the server on CPU 1 (taskset), niceness $NICE"
    wrk_threads_max=1
else
    pinning="none, niceness $NICE"
    wrk_threads_max=$(nproc)
fi

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# start_server CONTENDER PORT: starts it in the background (server_pid) and waits until it answers.
start_server() {
    local contender=$1 port=$2
    if [[ $contender == seed ]]; then
        # One worker process: Django's local-memory cache (the session store) is per process.
        (cd "$here/seed" && exec "${server_pin[@]}" "$venv/bin/gunicorn" \
            --bind "127.0.0.1:$port" --workers 1 --worker-class gthread \
            --threads "$SEED_THREADS" --no-control-socket --log-level warning \
            seedbench.wsgi:application) >"$out/server.log" 2>&1 &
    else
        CONTENDER=$contender PORT=$port "${server_pin[@]}" "$out/bench_server" \
            >"$out/server.log" 2>&1 &
    fi
    server_pid=$!
    for _ in $(seq 1 100); do
        if curl -s -o /dev/null "http://127.0.0.1:$port/cart"; then
            return 0
        fi
        kill -0 "$server_pid" 2>/dev/null || break
        sleep 0.1
    done
    log "the $contender server did not come up:"
    cat "$out/server.log" >&2
    exit 1
}

stop_server() {
    cleanup
}

# cpu_ticks PID...: the user and the system CPU time of the processes, in clock ticks, from
# /proc/PID/stat (fields 14 and 15), as two numbers.
cpu_ticks() {
    local pid user=0 system=0 fields
    local -a f
    for pid in "$@"; do
        # The fields after the command name, which is in parentheses and may hold spaces.
        fields=$(sed 's/^.*) //' "/proc/$pid/stat" 2>/dev/null) || continue
        read -r -a f <<<"$fields"
        # f[0] is field 3 of stat(5), so utime (14) and stime (15) are f[11] and f[12].
        user=$((user + f[11]))
        system=$((system + f[12]))
    done
    echo "$user $system"
}

# server_cpu_ticks: the user and the system CPU time of the server process and its children
# (gunicorn's worker), in clock ticks.
server_cpu_ticks() {
    # shellcheck disable=SC2046
    cpu_ticks "$server_pid" $(pgrep -P "$server_pid" || true)
}

# redis_pid CONTENDER: the process id of the Redis server at REDIS_URL, for the Redis
# contenders, when redis-cli reaches it and it runs on this machine; nothing otherwise.
redis_pid() {
    local pid
    [[ $1 == raw_redis || $1 == redis ]] || return 0
    command -v redis-cli >/dev/null || return 0
    pid=$(redis-cli -u "${REDIS_URL:-redis://127.0.0.1:6379}" info server 2>/dev/null |
        tr -d '\r' | awk -F: '$1 == "process_id" { print $2 }')
    [[ -n $pid && -r /proc/$pid/stat ]] && echo "$pid"
    return 0
}

# establish_sessions URL N FILE: N sessions, each by one POST /cart/add, their cookies in FILE.
establish_sessions() {
    local url=$1 n=$2 file=$3 cookie
    : >"$file"
    for _ in $(seq 1 "$n"); do
        # Every `Set-Cookie: name=value; …` of the response with a value (axum_session also
        # sends an empty `store=` to clear one), as one `Cookie` header value.
        cookie=$(curl -s -D - -o /dev/null -X POST "$url/cart/add" | tr -d '\r' |
            awk 'tolower($1) == "set-cookie:" { sub(/;.*/, "", $2); if ($2 !~ /=$/) print $2 }' |
            paste -sd ';' - | sed 's/;/; /g')
        # The bare server keeps no session: send it a cookie all the same.
        echo "${cookie:-id=none}" >>"$file"
    done
}

# fill_sessions URL FILE: 10 other namespaces of 1 KiB in each session of FILE (POST /fill).
fill_sessions() {
    local url=$1 file=$2 cookie
    while read -r cookie; do
        [[ $(curl -s -X POST -H "Cookie: $cookie" "$url/fill") == ok ]] || {
            log "POST /fill failed"
            exit 1
        }
    done <"$file"
}

# quantity URL COOKIE: the cart's quantity as the server reports it.
quantity() {
    curl -s -H "Cookie: $2" "$1/cart"
}

# run_wrk URL CONNECTIONS SECONDS METHOD PATH COOKIES: wrk's RESULT line.
run_wrk() {
    local url=$1 conns=$2 seconds=$3 method=$4 path=$5 cookies=$6 threads
    threads=$((conns < wrk_threads_max ? conns : wrk_threads_max))
    "${client_pin[@]}" wrk -t "$threads" -c "$conns" -d "${seconds}s" -s "$here/sessions.lua" \
        "$url" -- "$method" "$path" "$cookies" "$threads" | grep '^RESULT'
}

results=$out/results.tsv
echo -e "round\tsessions\tworkload\tcontender\tconnections\trequests\tduration_us\tp50_us\tp99_us\terrors\tserver_cpu_ticks\tload1\tserver_user_ticks\tserver_system_ticks\tredis_cpu_ticks" >"$results"
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
log "load average before: $load_before"

for round in $(seq 1 "$ROUNDS"); do
  for sessions in $SESSIONS; do
    for conns in $CONNECTIONS; do
        for contender in $CONTENDERS; do
            if [[ $sessions == large && $contender == seed ]]; then
                continue
            fi
            port=$(free_port)
            url=http://127.0.0.1:$port
            start_server "$contender" "$port"
            cookies=$out/cookies.txt
            establish_sessions "$url" "$conns" "$cookies"
            if [[ $sessions == large && $contender != bare ]]; then
                fill_sessions "$url" "$cookies"
            fi
            first=$(head -1 "$cookies")
            if [[ $contender != bare && $(quantity "$url" "$first") != 1 ]]; then
                log "$contender: a new session's cart does not hold one apple"
                exit 1
            fi
            for workload in $WORKLOADS; do
                case $workload in
                add) method=POST path=/cart/add ;;
                read) method=GET path=/cart ;;
                *) log "unknown workload $workload"; exit 1 ;;
                esac
                log "round $round: $contender, $sessions sessions, $conns connection(s), $workload"
                run_wrk "$url" "$conns" "$WARMUP" "$method" "$path" "$cookies" >/dev/null
                redis=$(redis_pid "$contender")
                read -r user_before system_before < <(server_cpu_ticks)
                [[ -n $redis ]] && read -r redis_user redis_system < <(cpu_ticks "$redis")
                line=$(run_wrk "$url" "$conns" "$DURATION" "$method" "$path" "$cookies")
                read -r user_after system_after < <(server_cpu_ticks)
                user=$((user_after - user_before))
                system=$((system_after - system_before))
                cpu=$((user + system))
                redis_cpu=-
                if [[ -n $redis ]]; then
                    read -r redis_user_after redis_system_after < <(cpu_ticks "$redis")
                    redis_cpu=$((redis_user_after + redis_system_after - redis_user - redis_system))
                fi
                load1=$(cut -d' ' -f1 /proc/loadavg)
                # RESULT requests=… duration_us=… p50_us=… p99_us=… errors=…
                read -r requests duration p50 p99 errors < <(
                    echo "$line" | sed -E 's/[a-z0-9_]+=//g; s/^RESULT //')
                echo -e "$round\t$sessions\t$workload\t$contender\t$conns\t$requests\t$duration\t$p50\t$p99\t$errors\t$cpu\t$load1\t$user\t$system\t$redis_cpu" >>"$results"
                if [[ $errors != 0 ]]; then
                    log "$contender: $errors errors"
                    exit 1
                fi
                # The sessions were kept: after `add`, the first cart holds more than one apple.
                if [[ $workload == add && $contender != bare ]]; then
                    held=$(quantity "$url" "$first")
                    if ! [[ $held =~ ^[0-9]+$ ]] || ((held <= 1)); then
                        log "$contender: the cart holds ${held:-nothing} after the add run"
                        exit 1
                    fi
                fi
            done
            stop_server
        done
    done
  done
done

load_after=$(cut -d' ' -f1-3 /proc/loadavg)
elapsed=$(($(date -u +%s) - started))

# ---- the table: medians over the rounds, ratios to raw tower-sessions ----
python3 - "$results" "$out/results.md" <<EOF
import csv, statistics, sys
from collections import defaultdict

rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
runs = defaultdict(list)
for r in rows:
    rps = int(r["requests"]) / (int(r["duration_us"]) / 1e6)
    # The server's CPU time per request, in µs (clock ticks of 1/$(getconf CLK_TCK) s).
    per_request = lambda ticks: int(ticks) * 1e6 / $(getconf CLK_TCK) / int(r["requests"])
    cpu = per_request(r["server_cpu_ticks"])
    # The server's user and system time, and the Redis server's (None when not measured).
    split = (per_request(r["server_user_ticks"]), per_request(r["server_system_ticks"]),
             None if r["redis_cpu_ticks"] == "-" else per_request(r["redis_cpu_ticks"]))
    runs[(r["sessions"], r["workload"], int(r["connections"]), r["contender"])].append(
        (rps, int(r["p50_us"]), int(r["p99_us"]), float(r["load1"]), cpu, split))

names = {
    "bare": "bare axum (floor)",
    "raw": "raw tower-sessions",
    "controllers": "SessionControllers",
    "embedded": "SessionControllers on stores::MemoryStore",
    "keyed": "Keyed<T>",
    "axum_session": "axum_session",
    "raw_redis": "raw tower-sessions on Redis (tower-sessions-redis-store)",
    "redis": "SessionControllers on stores::RedisStore",
    "seed": "seed: django-spire + Django + gunicorn",
}
def latency(us):
    return f"{us} µs" if us < 1000 else f"{us / 1000:.2f} ms"

order = "$CONTENDERS".split()
lines = [
    "Loopback HTTP load test, $(date -u '+%Y-%m-%d %H:%M') UTC: $built; "
    "wrk $(wrk -v 2>&1 | head -1 | cut -d' ' -f2), ${DURATION} s per run after ${WARMUP} s of warm-up, "
    "$ROUNDS round(s) (medians); pinning: $pinning; seed: gunicorn gthread, 1 worker, "
    "$SEED_THREADS threads; load average before $load_before, after $load_after; "
    "the whole run took $elapsed s.",
    "",
    "The Redis contenders are compared with raw tower-sessions on Redis, the others with raw "
    "tower-sessions on its MemoryStore.",
    "",
    "| sessions | workload | connections | contender | requests/s | p50 | p99 | requests/s ÷ raw "
    "| server CPU / request | ÷ raw | load (1 min) |",
    "|---|---|---|---|---|---|---|---|---|---|---|",
]
def medians(key):
    rs = runs.get(key)
    if not rs:
        return None, None
    return statistics.median(r[0] for r in rs), statistics.median(r[4] for r in rs)
for sessions in "$SESSIONS".split():
  for workload in "$WORKLOADS".split():
    for conns in [int(c) for c in "$CONNECTIONS".split()]:
        for c in order:
            rs = runs.get((sessions, workload, conns, c))
            if not rs:
                continue
            base = "raw_redis" if c in ("raw_redis", "redis") else "raw"
            raw_rps, raw_cpu = medians((sessions, workload, conns, base))
            rps = statistics.median(r[0] for r in rs)
            p50 = int(statistics.median(r[1] for r in rs))
            p99 = int(statistics.median(r[2] for r in rs))
            load = max(r[3] for r in rs)
            cpu = statistics.median(r[4] for r in rs)
            ratio = f"{rps / raw_rps:.3f}" if raw_rps else "–"
            cpu_ratio = f"{cpu / raw_cpu:.3f}" if raw_cpu else "–"
            lines.append(f"| {sessions} | {workload} | {conns} | {names.get(c, c)} | {rps:,.0f} | "
                         f"{latency(p50)} | {latency(p99)} | {ratio} | {cpu:.1f} µs | "
                         f"{cpu_ratio} | {load:.2f} |")
# Where a Redis contender's CPU goes: the app's user and system time, and the Redis server's.
split_lines = []
for sessions in "$SESSIONS".split():
  for workload in "$WORKLOADS".split():
    for conns in [int(c) for c in "$CONNECTIONS".split()]:
        for c in order:
            rs = runs.get((sessions, workload, conns, c))
            if not rs or c not in ("raw_redis", "redis"):
                continue
            user = statistics.median(r[5][0] for r in rs)
            system = statistics.median(r[5][1] for r in rs)
            redis = [r[5][2] for r in rs if r[5][2] is not None]
            redis = f"{statistics.median(redis):.1f} µs" if redis else "–"
            split_lines.append(f"| {sessions} | {workload} | {conns} | {names.get(c, c)} | "
                               f"{user:.1f} µs | {system:.1f} µs | {redis} |")
if split_lines:
    lines += [
        "",
        "CPU time per request of the Redis contenders: the server's, in user space and in the "
        "kernel, and the Redis server's at REDIS_URL (when it runs on this machine).",
        "",
        "| sessions | workload | connections | contender | server user | server system "
        "| Redis server |",
        "|---|---|---|---|---|---|---|",
    ] + split_lines
text = "\n".join(lines) + "\n"
open(sys.argv[2], "w").write(text)
print(text)
EOF
log "done in $elapsed s; table in $out/results.md, raw rows in $results"
