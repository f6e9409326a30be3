#!/usr/bin/env bash
# `make test-loaded`: the whole suite with every core busy — N busy-loop processes beside it (default 4, as on a
# shared CI runner at a load average of 6+ on 2 cores). The suite must pass like this: its tests wait for
# conditions and bound attempts, never a duration they do not control.
set -uo pipefail
n=${MEDPORT_BURNERS:-4}
pids=()
for _ in $(seq "$n"); do
  ( while :; do :; done ) &
  pids+=("$!")
done
stop() { kill "${pids[@]}" 2>/dev/null; wait "${pids[@]}" 2>/dev/null; }
trap stop EXIT INT TERM
echo "test-loaded: $n busy loops (pids ${pids[*]}) beside the suite; load average $(cut -d' ' -f1-3 /proc/loadavg)"
start=$(date +%s)
make test
rc=$?
echo "test-loaded: make test exited $rc after $(( $(date +%s) - start )) s; load average $(cut -d' ' -f1-3 /proc/loadavg)"
exit "$rc"
