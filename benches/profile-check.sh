#!/usr/bin/env bash
# Where a Check's instructions go: the serving bench's health and check
# phases against the release server running under callgrind. The hook zeroes
# the counters when a phase starts and dumps them when it ends, and reads the
# server's call counts from /metrics, so each dump holds one phase:
#   callgrind_annotate --inclusive=yes target/bench/callgrind/callgrind.out.<pid>.2
# Instructions per call = the dump's total / the calls in calls.txt (health
# calls are the bench's own count, printed in its table: rate x seconds).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${CONSENTD_PROFILE_OUT:-$PWD/target/bench/callgrind}
mkdir -p "$out"
rm -f "$out"/callgrind.out.* "$out"/calls.txt
export CONSENTD_BENCH_OUT=$out
export CONSENTD_BENCH_PHASES=health,check
export CONSENTD_BENCH_WARMUP_MS=0
export CONSENTD_BENCH_SECONDS=${CONSENTD_BENCH_SECONDS:-20}
export CONSENTD_BENCH_SERVER_WRAPPER="valgrind --tool=callgrind --callgrind-out-file=$out/callgrind.out.%p"
export CONSENTD_BENCH_HOOK='
  case $BENCH_EVENT in
    start) callgrind_control -z "$BENCH_SERVER_PID" >/dev/null ;;
    end)   callgrind_control -d "$BENCH_PHASE" "$BENCH_SERVER_PID" >/dev/null
           { echo "after $BENCH_PHASE:"
             curl -s "http://$BENCH_ADMIN_ADDR/metrics" | grep "^consentd_rpc_duration_seconds_count"
           } >>"'"$out"'/calls.txt" ;;
  esac'
cargo bench --bench serving
ls -1 "$out"/callgrind.out.*
cat "$out"/calls.txt
