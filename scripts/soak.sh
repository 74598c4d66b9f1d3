#!/usr/bin/env bash
# Runs the soak test (tests/soak.rs): sustained HTTP load on an in-process axum server, with
# expiring namespaces, checking every response, RSS after the warm-up, and the store at the end.
#
#   scripts/soak.sh [SECONDS]          (default: 180)
#
# Environment: SOAK_VISITORS (default 64) sets the visitors, each with its own connection and
# session; SOAK_STORE=redis runs it on the local Redis (REDIS_URL, default
# redis://127.0.0.1:6379; REQUIRE_SERVICES=1 makes a missing Redis a failure) instead of
# MemoryStore; SOAK_PROFILE=release runs an optimized build (the default is the debug build that
# `cargo test` uses). The test's last line gives the figures: duration, requests, expirations,
# RSS after the warm-up and at the end, and the final state of the store. Exits non-zero if the
# test fails.
set -euo pipefail

seconds=${1:-180}
cd "$(dirname "$0")/.."

profile=()
if [ "${SOAK_PROFILE:-debug}" = release ]; then
    profile=(--release)
fi

echo "== soak: ${seconds} s, ${SOAK_VISITORS:-64} visitors, store ${SOAK_STORE:-memory}, ${SOAK_PROFILE:-debug} build"
SOAK_SECS="$seconds" cargo test "${profile[@]}" --test soak -- --ignored --exact soak --nocapture
