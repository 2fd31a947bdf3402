#!/usr/bin/env bash
# CPU time per call, split between the server, its PostgreSQL backends and
# the bench's own client, for the serving bench's phases (default: health,
# check, record). Unlike wall-clock rates, CPU per call barely moves when
# other work shares the machine. The bench runs this script as its hook,
# before and after each phase, to read /proc/<pid>/stat (utime + stime).
#   benches/cpu-split.sh          then read target/bench/cpu/cpu.txt
set -euo pipefail
cd "$(dirname "$0")/.."
out=${CONSENTD_CPU_OUT:-$PWD/target/bench/cpu}

if [ "${1:-}" = "--hook" ]; then
  ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
  pg=0
  for pid in $(psql -h 127.0.0.1 -U postgres -Atc \
      "SELECT pid FROM pg_stat_activity WHERE datname LIKE 'consentd_bench_serving_%'"); do
    pg=$((pg + $(ticks "$pid")))
  done
  echo "$BENCH_EVENT $BENCH_PHASE server=$(ticks "$BENCH_SERVER_PID") postgres=$pg client=$(ticks "$BENCH_CLIENT_PID")" >>"$out/cpu.txt"
  exit 0
fi

mkdir -p "$out"
: >"$out/cpu.txt"
export CONSENTD_CPU_OUT=$out
export CONSENTD_BENCH_OUT=$out
export CONSENTD_BENCH_PHASES=${CONSENTD_BENCH_PHASES:-health,check,record}
# No warm-up: the CPU between the hooks then belongs to the measured calls.
export CONSENTD_BENCH_WARMUP_MS=0
export CONSENTD_BENCH_HOOK="$PWD/benches/cpu-split.sh --hook"
cargo bench --bench serving
# Ticks are 1/100 s. Calls per phase: rate x seconds from the table.
python3 - "$out" <<'PY'
import json, sys
out = sys.argv[1]
rows = {r["what"].split(",")[0].strip("`"): r for r in json.load(open(f"{out}/serving.json"))["rows"]}
seconds = json.load(open(f"{out}/serving.json"))["seconds_per_phase"]
marks = {}
for line in open(f"{out}/cpu.txt"):
    event, phase, *fields = line.split()
    marks.setdefault(phase, {})[event] = {k: float(v) for k, v in (f.split("=") for f in fields)}
names = {"health": "grpc.health.v1.Health/Check", "check": "ConsentService/Check", "record": "RecordConsent"}
for phase, name in names.items():
    if phase not in marks or name not in rows:
        continue
    calls = rows[name]["rate"] * seconds
    d = {k: (marks[phase]["end"][k] - marks[phase]["start"][k]) * 10_000 / calls for k in ("server", "postgres", "client")}
    print(f"{name}: {calls:,.0f} calls; CPU µs per call: server {d['server']:.0f}, "
          f"PostgreSQL {d['postgres']:.0f}, client {d['client']:.0f}")
PY
