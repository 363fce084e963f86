#!/usr/bin/env bash
# One call on a GPU machine: the stand-in data, the GPU checks, the speed benchmark, then
# a sweep inside a time budget (lanes and torch.compile chosen from the benchmark).
# Everything to keep lands in $OUT:
#   log.txt, bench.json, sweep.json (wall time, every run's time), runs.tar.gz (the run
#   store without checkpoints), runs.txt
# Usage (repo root): OUT=dir BUDGET_S=540 bash benchmarks/gpu_lab.sh
#   MODE=finish (default) trains the full profile's missing runs into report/runs.
#   MODE=time times the seed report's protocol from nothing (SEEDS=1 or 3) in a fresh store.
#   MODE=accuracy trains the seed's recipe as the seed wrote it, 30 epochs x SEEDS (3), and
#     compares its validation accuracy with labkit's baseline runs in report/runs (no sweep).
#   MODE=modern trains modern-preset variants, VARIANTS="EPOCHS[:key=value,...] ..." (default
#     "60 80 80:cutout=12"), into a scratch store; prints test accuracy and training seconds
#     (for the >= 92% in <= 2 min target).
#   PROFILE=smoke runs the same steps on a CPU in minutes (to check this script).
set -u
OUT=${OUT:-build/gpu_out}
PROFILE=${PROFILE:-full}
BUDGET_S=${BUDGET_S:-540}
DATA=${DATA:-build/cifar-standin}
MODE=${MODE:-finish}
case $MODE in
  finish) SEEDS=${SEEDS:-3}; PROTOCOL=lab ;;
  time) SEEDS=${SEEDS:-1}; PROTOCOL=seed; RUNS_DIR=${RUNS_DIR:-build/protocol-runs-$(date +%s)} ;;
  accuracy) SEEDS=${SEEDS:-3}; PROTOCOL=seed ;;
  modern) SEEDS=1; PROTOCOL=lab; RUNS_DIR=${RUNS_DIR:-build/modern-runs} ;;
  *) echo "MODE must be finish, time, accuracy or modern, got $MODE"; exit 2 ;;
esac
mkdir -p "$OUT"
deadline=$(( $(date +%s) + BUDGET_S ))
export PYTHONUNBUFFERED=1
PY=${PY:-python3}
RUNS=${RUNS_DIR:-$($PY -c "from labkit.lab import profile; print(profile('$PROFILE').runs_dir)")}

main() {

echo "== $(date -u +%FT%TZ) mode $MODE, profile $PROFILE, protocol $PROTOCOL, $SEEDS seed(s), budget ${BUDGET_S}s, code ${LABKIT_CODE_VERSION:-?}"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>/dev/null || echo "no nvidia-smi"
$PY -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.cuda.is_available())"

echo "== data: CIFAR-10 stand-in (JPEG re-encoded) into $DATA"
t=$(date +%s.%N); $PY .device/cifar10/make_batches.py "$DATA" >/dev/null || exit 1
echo "data ready in $(awk "BEGIN{print $(date +%s.%N) - $t}") s"

echo "== GPU tests (graphed step, lanes, compile)"
$PY -m pytest -q -m gpu -p no:cacheprovider tests/test_gpu.py 2>&1 | tail -15

echo "== bench"
BENCH=($PY -m labkit bench --out "$OUT/bench.json")
if ! $PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  BENCH+=(--cpu-check)
elif [ "$MODE" = accuracy ]; then
  BENCH+=(--data-dir "$DATA" --epochs 3)
else
  BENCH+=(--data-dir "$DATA" --epochs 3 --probe-lanes 2 3 --compile "${COMPILE:-default}" --breakdown-steps 20)
fi
if [ "$MODE" = accuracy ]; then
  [ "$PROFILE" = smoke ] && BENCH+=(--accuracy-epochs 1) || BENCH+=(--accuracy-epochs 30 --accuracy-runs "$RUNS")
  BENCH+=(--accuracy-seeds "$SEEDS")
fi
"${BENCH[@]}"

if [ "$MODE" = finish ] || [ "$MODE" = time ]; then
  echo "== sweep until $(date -u -d @$deadline +%TZ) into $RUNS"
  SWEEP=($PY -m labkit sweep --profile "$PROFILE" --protocol "$PROTOCOL" --seeds "$SEEDS" --data-dir "$DATA" --runs-dir "$RUNS"
         --deadline "$deadline" --checkpoint-every 0 --timing-json "$OUT/sweep.json")
  "${SWEEP[@]}" --lanes auto --compile auto --bench-json "$OUT/bench.json" \
    || { echo "== sweep failed; once more with one lane, no compile"; "${SWEEP[@]}" --lanes 1 --timing-json "$OUT/sweep-retry.json"; }
elif [ "$MODE" = modern ]; then
  MODERN=(--preset modern --data-dir "$DATA" --runs-dir "$RUNS" --checkpoint-every 0)
  [ "$PROFILE" = smoke ] && MODERN+=(--synthetic --data-dir build/smoke-synthetic --set width=8)
  for v in ${VARIANTS:-60 80 80:cutout=12}; do
    e=${v%%:*}; sets=()
    if [[ $v == *:* ]]; then IFS=, read -ra kv <<< "${v#*:}"; for x in "${kv[@]}"; do sets+=(--set "$x"); done; fi
    left=$(( deadline - $(date +%s) ))
    [ $left -gt 10 ] || { echo "no time left for $v"; break; }
    echo "== modern $v (at most ${left}s)"
    timeout "$left" $PY -m labkit train "${MODERN[@]}" --epochs "$e" "${sets[@]}" --name "modern-$(echo "$v" | tr ':,=' '---')" | tail -3
  done
fi
[ -d "$RUNS" ] && $PY -m labkit runs --runs-dir "$RUNS" > "$OUT/runs.txt"
tar czf "$OUT/runs.tar.gz" --exclude='*.pt' --exclude='.lock' "$RUNS"
echo "== end $(date -u +%FT%TZ)"
}

main 2>&1 | tee "$OUT/log.txt"
# What comes back is committed: name no folder of the machine it ran on.
for f in "$OUT"/*.txt "$OUT"/*.json; do
  [ -f "$f" ] && sed -i "s#$(pwd)/##g; s#$(cd "$OUT" && pwd)/#\$OUT/#g; s#$HOME/#~/#g" "$f"
done
ls -la "$OUT"
