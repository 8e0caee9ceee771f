#!/usr/bin/env bash
# Stops what up.sh started in STATE_DIR (reverse order), and keeps the logs;
# with component names (e.g. `operator`), only those.
set -uo pipefail
state=${1:?usage: down.sh STATE_DIR [COMPONENT...]}
shift
names=("$@")
[ ${#names[@]} -gt 0 ] || names=(operator registry kwok kube-scheduler kube-controller-manager kube-apiserver etcd)
for name in "${names[@]}"; do
  f="$state/pids/$name.pid"
  [ -f "$f" ] || continue
  pid=$(cat "$f")
  # Each component runs in its own session: signal the whole group.
  kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null
  for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL -- "-$pid" 2>/dev/null || true
  rm -f "$f"
done
