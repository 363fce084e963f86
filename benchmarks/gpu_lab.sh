#!/usr/bin/env bash
# One call on a GPU machine: the stand-in data, the GPU checks, the speed benchmark, then
# a sweep inside a time budget (lanes and torch.compile chosen from the benchmark).
# Everything to keep lands in $OUT:
#   log.txt, bench.json, sweep.json (wall time, every run's time), runs.tar.gz (the run
#   store without checkpoints), runs.txt
# Usage (repo root): OUT=dir BUDGET_S=540 bash benchmarks/gpu_lab.sh
#   MODE=finish (default) trains the full profile's missing runs into report/runs.
#   MODE=time times the seed report's protocol from nothing (SEEDS=1 or 3) in a fresh store.
#   PROFILE=smoke runs the same steps on a CPU in minutes (to check this script).
set -u
OUT=${OUT:-build/gpu_out}
PROFILE=${PROFILE:-full}
BUDGET_S=${BUDGET_S:-540}
DATA=${DATA:-/tmp/labkit-cifar}
MODE=${MODE:-finish}
case $MODE in
  finish) SEEDS=${SEEDS:-3}; PROTOCOL=lab ;;
  time) SEEDS=${SEEDS:-1}; PROTOCOL=seed; RUNS_DIR=${RUNS_DIR:-/tmp/labkit-protocol-$$} ;;
  *) echo "MODE must be finish or time, got $MODE"; exit 2 ;;
esac
mkdir -p "$OUT"
deadline=$(( $(date +%s) + BUDGET_S ))
exec > >(tee "$OUT/log.txt") 2>&1
export PYTHONUNBUFFERED=1
PY=${PY:-python3}
RUNS=${RUNS_DIR:-$($PY -c "from labkit.lab import profile; print(profile('$PROFILE').runs_dir)")}

echo "== $(date -u +%FT%TZ) mode $MODE, profile $PROFILE, protocol $PROTOCOL, $SEEDS seed(s), budget ${BUDGET_S}s, code ${LABKIT_CODE_VERSION:-?}"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>/dev/null || echo "no nvidia-smi"
$PY -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.cuda.is_available())"

echo "== data: CIFAR-10 stand-in (JPEG re-encoded) into $DATA"
t=$(date +%s.%N); $PY .device/cifar10/make_batches.py "$DATA" >/dev/null || exit 1
echo "data ready in $(awk "BEGIN{print $(date +%s.%N) - $t}") s"

echo "== GPU tests (graphed step, lanes, compile)"
$PY -m pytest -q -m gpu -p no:cacheprovider tests/test_gpu.py 2>&1 | tail -15

echo "== bench"
if $PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  $PY -m labkit bench --data-dir "$DATA" --epochs 3 --probe-lanes 2 3 --compile "${COMPILE:-default}" --out "$OUT/bench.json"
else
  $PY -m labkit bench --cpu-check --out "$OUT/bench.json"
fi

echo "== sweep until $(date -u -d @$deadline +%TZ) into $RUNS"
SWEEP=($PY -m labkit sweep --profile "$PROFILE" --protocol "$PROTOCOL" --seeds "$SEEDS" --data-dir "$DATA" --runs-dir "$RUNS"
       --deadline "$deadline" --checkpoint-every 0 --timing-json "$OUT/sweep.json")
"${SWEEP[@]}" --lanes auto --compile auto --bench-json "$OUT/bench.json" \
  || { echo "== sweep failed; once more with one lane, no compile"; "${SWEEP[@]}" --lanes 1 --timing-json "$OUT/sweep-retry.json"; }
$PY -m labkit runs --runs-dir "$RUNS" > "$OUT/runs.txt"
tar czf "$OUT/runs.tar.gz" --exclude='*.pt' --exclude='.lock' "$RUNS"
ls -la "$OUT"
echo "== end $(date -u +%FT%TZ)"
