#!/usr/bin/env bash
# Runs the launcher once per seed, N at a time; stops everything on failure.
#   launch/sweep.sh --jobs=2 --seeds="0 1 2" [--root=runs/sweep] -- <launcher flags>
set -euo pipefail
jobs=1; seeds="0"; root="runs/sweep"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --jobs=*) jobs="${1#*=}" ;;
    --seeds=*) seeds="${1#*=}" ;;
    --root=*) root="${1#*=}" ;;
    --) shift; break ;;
    *) echo "error: unknown option $1 (use --jobs=, --seeds=, --root=, then -- and launcher flags)" >&2; exit 2 ;;
  esac
  shift
done
[[ "$jobs" =~ ^[1-9][0-9]*$ ]] || { echo "error: --jobs must be a positive integer" >&2; exit 2; }
python_bin="${PYTHON:-python}"
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; }
trap cleanup EXIT
for seed in $seeds; do
  workdir="$root/seed$seed"
  mkdir -p "$workdir"
  "$python_bin" -m gradmix_tf.launch "$@" --config.seed="$seed" --workdir="$workdir" \
      > "$workdir/log.txt" 2>&1 &
  pids+=("$!")
  echo "seed $seed -> $workdir (pid $!)"
  while [[ $(jobs -rp | wc -l) -ge $jobs ]]; do
    if ! wait -n; then echo "error: a run failed; see $root/seed*/log.txt" >&2; exit 1; fi
  done
done
while [[ $(jobs -rp | wc -l) -gt 0 ]]; do
  if ! wait -n; then echo "error: a run failed; see $root/seed*/log.txt" >&2; exit 1; fi
done
trap - EXIT
echo "all seeds done: $root/seed*/metrics.json"
