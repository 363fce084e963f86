#!/usr/bin/env bash
# One call on a GPU machine: the stand-in data, GPU checks, the benchmark, then the step of
# MODE inside a time budget. Everything to keep lands in $OUT:
#   log.txt, bench.json, sweep.json (wall time, every run's time), runs.tar.gz (the run
#   store without checkpoints), runs.txt
# Usage (repo root): OUT=dir BUDGET_S=530 MODE=... bash benchmarks/gpu_lab.sh
#   finish (default)  the full profile's missing runs into report/runs; a lean benchmark
#                     (lanes probe only) leaves the lease to the runs. RETRAIN="CODE ..."
#                     first sets aside the runs those code versions trained (to
#                     build/set-aside-runs), so the sweep trains them again with this code.
#   speed             the whole benchmark: seed recipe, labkit, labkit compiled, 1-3 lanes,
#                     the step's op breakdown, and every GPU test; no training after it.
#   time              the seed report's protocol from nothing (SEEDS=1 or 3) in a fresh
#                     store, lanes chosen from the benchmark (which also breaks the step down
#                     by op; compile=COMPILE times compile too, at the cost of the sweep's
#                     budget); of the GPU tests only the dropout-graph ones. BUDGET_S=570.
#                     ONLY=NOTEBOOK[,...] (finish and time) sweeps only those notebooks'
#                     runs (labkit sweep --only; the script's test takes 05_final);
#                     default: the whole plan, as a lease must time it.
#   accuracy          the seed's recipe as the seed wrote it, 30 epochs x SEEDS (3), against
#                     labkit's baseline runs in report/runs (validation accuracy, Welch CI).
#   modern            modern-preset variants, VARIANTS="EPOCHS[:key=value,...] ..." (default
#                     "100:cutout=12,ema=0.999 80 80:cutout=12 80:ema=0.999 60"), into a scratch store (the >= 92% in <= 2 min target).
#   confirm           the variant MODE=modern chose on validation, WINNER="EPOCHS[:key=value,...]",
#                     trained on all 50,000 images for SEEDS (3) seeds and tested once each:
#                     test accuracy and training seconds, mean and 95% CI, in confirm.json.
#   PROFILE=smoke runs the same steps on a CPU in minutes (to check this script).
set -u
OUT=${OUT:-build/gpu_out}
PROFILE=${PROFILE:-full}
BUDGET_S=${BUDGET_S:-530}
DATA=${DATA:-build/cifar-standin}
MODE=${MODE:-finish}
GPU_TESTS="not compile"  # pytest -k of tests/test_gpu.py; the compile check costs a compilation
case $MODE in
  finish) SEEDS=${SEEDS:-3}; PROTOCOL=lab; BENCH_ARGS=(--probe-lanes 2) ;;
  speed) SEEDS=1; PROTOCOL=lab; GPU_TESTS=""
         BENCH_ARGS=(--probe-lanes 2 3 --compile "${COMPILE:-default}" --breakdown-steps 20) ;;
  # time: of the GPU tests only the dropout-graph ones (seconds; the protocol's dropout runs
  # are graphed with that code), so that the protocol fits one call beside the bench; the
  # bench's op breakdown costs seconds and says where the step's time goes. No compile by
  # default: a cold compile of forward and backward, twice (the last batch is smaller), would
  # take the minute or two the 12 runs need (about 720 lane-seconds in the first lease).
  time) SEEDS=${SEEDS:-1}; PROTOCOL=seed; RUNS_DIR=${RUNS_DIR:-build/protocol-runs-$(date +%s)}; GPU_TESTS=dropout
        BENCH_ARGS=(--probe-lanes 2 --breakdown-steps 20 ${COMPILE:+--compile "$COMPILE"}) ;;
  accuracy) SEEDS=${SEEDS:-3}; PROTOCOL=seed; BENCH_ARGS=() ;;
  # modern: no benchmark and no GPU tests (the other modes run them): the lease is for the variants
  modern) SEEDS=1; PROTOCOL=lab; RUNS_DIR=${RUNS_DIR:-build/modern-runs}; BENCH_ARGS=(); GPU_TESTS=none ;;
  confirm) SEEDS=${SEEDS:-3}; PROTOCOL=lab; RUNS_DIR=${RUNS_DIR:-build/modern-final-runs}; BENCH_ARGS=(); GPU_TESTS=none
           [ -n "${WINNER:-}" ] || { echo "MODE=confirm needs WINNER, the variant MODE=modern chose, e.g. WINNER=100:cutout=12,ema=0.999"; exit 2; } ;;
  *) echo "MODE must be finish, speed, time, accuracy, modern or confirm, got $MODE"; exit 2 ;;
esac
if [ -n "${RETRAIN:-}" ] && [ "$MODE" != finish ]; then
  echo "RETRAIN goes with MODE=finish (it retrains runs of report/runs), got MODE=$MODE"; exit 2
fi
if [ -n "${ONLY:-}" ] && [ "$MODE" != finish ] && [ "$MODE" != time ]; then
  echo "ONLY goes with MODE=finish or time (it narrows their sweep), got MODE=$MODE"; exit 2
fi
# "EPOCHS:key=value,key=value" -> $epochs and the array sets=(--set key=value ...)
variant() {
  epochs=${1%%:*}; sets=()
  if [[ $1 == *:* ]]; then IFS=, read -ra kv <<< "${1#*:}"; for x in "${kv[@]}"; do sets+=(--set "$x"); done; fi
}
mkdir -p "$OUT"
deadline=$(( $(date +%s) + BUDGET_S ))
export PYTHONUNBUFFERED=1
PY=${PY:-python3}
PROFILE_RUNS=$($PY -c "from labkit.lab import get_profile; print(get_profile('$PROFILE').runs_dir)")
RUNS=${RUNS_DIR:-$PROFILE_RUNS}

main() {
fail=0  # set by a step whose failure leaves nothing to report: the script's exit status
echo "== $(date -u +%FT%TZ) mode $MODE, profile $PROFILE, protocol $PROTOCOL${ONLY:+ (only $ONLY)}, $SEEDS seed(s), budget ${BUDGET_S}s, code ${LABKIT_CODE_VERSION:-?}"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>/dev/null || echo "no nvidia-smi"
$PY -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.cuda.is_available())"

if [ "$PROFILE" = smoke ] && [ ! -f .device/cifar10/make_batches.py ]; then
  echo "== data: none needed (PROFILE=smoke trains on labkit's synthetic data)"
else
  echo "== data: CIFAR-10 stand-in (JPEG re-encoded) into $DATA"
  t=$(date +%s.%N); $PY .device/cifar10/make_batches.py "$DATA" >/dev/null || exit 1
  echo "data ready in $(awk "BEGIN{print $(date +%s.%N) - $t}") s"
fi

if [ "$GPU_TESTS" = none ]; then
  echo "== GPU tests: none in mode $MODE"
else
  echo "== GPU tests (-k '${GPU_TESTS:-all}')"
  $PY -m pytest -q -m gpu -p no:cacheprovider ${GPU_TESTS:+-k "$GPU_TESTS"} tests/test_gpu.py 2>&1 | tail -15
fi

if [ "$MODE" = modern ] || [ "$MODE" = confirm ]; then
  echo "== bench: none in mode $MODE"
else
echo "== bench"
BENCH=($PY -m benchmarks.bench --out "$OUT/bench.json")
if ! $PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  BENCH+=(--cpu-check)
  [ "$MODE" = speed ] && BENCH+=(--breakdown-steps 5)
else
  BENCH+=(--data-dir "$DATA" --epochs 3 "${BENCH_ARGS[@]}")
fi
if [ "$MODE" = accuracy ]; then
  [ "$PROFILE" = smoke ] && BENCH+=(--accuracy-epochs 1) || BENCH+=(--accuracy-epochs 30 --accuracy-runs "$RUNS")
  BENCH+=(--accuracy-seeds "$SEEDS")
fi
# Where runs follow, a bench that hangs must not take their time: it saves after each
# part, so what it measured by then stays in bench.json.
case $MODE in finish|time) limit=${BENCH_LIMIT_S:-180} ;; *) limit=$BUDGET_S ;; esac
timeout "$limit" "${BENCH[@]}" || echo "== bench ended with exit $? (124: stopped at its ${limit}s limit); bench.json keeps what it saved"
fi

if [ "$MODE" = finish ] && [ -n "${RETRAIN:-}" ]; then
  echo "== set aside the runs of code $RETRAIN in $RUNS: the sweep trains them again"
  # shellcheck disable=SC2086  # RETRAIN is a list of versions
  $PY -m labkit runs --runs-dir "$RUNS" --set-aside $RETRAIN --to build/set-aside-runs \
    || echo "== set-aside failed (exit $?): nothing moved, the sweep trains only missing runs"
fi
if [ "$MODE" = finish ] || [ "$MODE" = time ]; then
  echo "== sweep until $(date -u -d @$deadline +%TZ) into $RUNS"
  SWEEP=($PY -m labkit sweep --profile "$PROFILE" --protocol "$PROTOCOL" --seeds "$SEEDS" --data-dir "$DATA" --runs-dir "$RUNS"
         --deadline "$deadline" --checkpoint-every 0 --timing-json "$OUT/sweep.json" ${ONLY:+--only "$ONLY"})
  # lanes, compile and a rate guess, as the benchmark chose them; one plain lane without one
  read -ra CHOSEN <<< "$($PY -m benchmarks.bench --sweep-options "$OUT/bench.json")"
  [ ${#CHOSEN[@]} -gt 0 ] || CHOSEN=(--lanes 1)
  "${SWEEP[@]}" "${CHOSEN[@]}" \
    || { echo "== sweep failed; once more with one lane, no compile"; "${SWEEP[@]}" --lanes 1 --timing-json "$OUT/sweep-retry.json"; }
  if [ "$MODE" = time ]; then
    # The fresh store's runs beside the same runs (same ids) in the profile's store: does the
    # code of now, on this GPU, reproduce them (benchmarks/README.md, "An open question")?
    $PY -c "
import sys
from labkit.tables import compare_runs
from labkit.runs import RunStore
t = compare_runs(RunStore(sys.argv[1]).all(), RunStore(sys.argv[2]).all())
print(t.to_string(index=False) if len(t) else f'no finished run of {sys.argv[1]} is in {sys.argv[2]}')
" "$RUNS" "$PROFILE_RUNS" > "$OUT/compare.txt" \
      && echo "== the new runs beside the profile's store: $OUT/compare.txt" && cat "$OUT/compare.txt" \
      || echo "== comparison with the profile's store failed (exit $?)"
  fi
elif [ "$MODE" = modern ]; then
  # 5,000 training images held out: the variants (and test-time views) are compared on
  # validation accuracy; the winner is then trained on all 50,000 and tested once.
  MODERN=(--preset modern --data-dir "$DATA" --runs-dir "$RUNS" --checkpoint-every 0 --set val_size=5000)
  EVAL=(--data-dir "$DATA" --runs-dir "$RUNS")
  variants=${VARIANTS:-100:cutout=12,ema=0.999 80 80:cutout=12 80:ema=0.999 60}
  if [ "$PROFILE" = smoke ]; then
    MODERN+=(--synthetic --data-dir build/smoke-synthetic --set width=8 --set val_size=100)
    EVAL+=(--synthetic --data-dir build/smoke-synthetic)
    variants=${VARIANTS:-3:cutout=12,ema=0.999 3 3:cutout=12 3:ema=0.999 2}  # the same steps, minutes on a CPU
  fi
  for v in $variants; do
    variant "$v"
    left=$(( deadline - $(date +%s) ))
    [ $left -gt 10 ] || { echo "no time left for $v"; break; }
    echo "== modern $v (at most ${left}s)"
    timeout "$left" $PY -m labkit train "${MODERN[@]}" --epochs "$epochs" "${sets[@]}" --name "modern-$(echo "$v" | tr ':,=' '---')" | tail -3
    rc=${PIPESTATUS[0]}
    [ "$rc" = 0 ] || echo "modern $v did not finish (exit $rc; 124: stopped at the deadline, the run stays unfinished)"
  done
  echo "== the same weights with translated test-time views too (tta_translate=2)"
  for d in "$RUNS"/modern-*/; do
    [ -f "$d/summary.json" ] || continue
    $PY -m labkit eval "$(basename "$d")" "${EVAL[@]}" --set tta_translate=2 --out "$OUT/eval-$(basename "$d").json"
  done
elif [ "$MODE" = confirm ]; then
  # All 50,000 training images, no validation: the choice was made on validation before.
  CONFIRM=(--preset modern --data-dir "$DATA" --runs-dir "$RUNS" --checkpoint-every 0)
  [ "$PROFILE" = smoke ] && CONFIRM+=(--synthetic --data-dir build/smoke-synthetic --set width=8)
  variant "$WINNER"
  name="modern-final-$(echo "$WINNER" | tr ':,=' '---')"
  for s in $(seq 0 $(( SEEDS - 1 ))); do
    left=$(( deadline - $(date +%s) ))
    [ $left -gt 10 ] || { echo "no time left for seed $s"; break; }
    echo "== $WINNER, seed $s, all training images (at most ${left}s)"
    timeout "$left" $PY -m labkit train "${CONFIRM[@]}" --epochs "$epochs" "${sets[@]}" --set seed="$s" --name "$name" | tail -3
    rc=${PIPESTATUS[0]}
    [ "$rc" = 0 ] || echo "seed $s did not finish (exit $rc; 124: stopped at the deadline)"
  done
  $PY -c "
import sys
import pandas as pd
from labkit.tables import estimates_frame
from labkit.runs import RunStore
runs = [r for r in RunStore(sys.argv[1]).all() if r.finished and r.name == sys.argv[2]]
if not runs:
    sys.exit(f'no finished run named {sys.argv[2]} in {sys.argv[1]}: nothing to confirm')
est = pd.concat([estimates_frame(runs, k, label_of=lambda r, k=k: k) for k in ('test_acc', 'train_seconds')])
print(est.to_string(index=False))
est.to_json(sys.argv[3], orient='records', indent=2)
" "$RUNS" "$name" "$OUT/confirm.json" || fail=1
fi
if [ "$MODE" != speed ] && [ -d "$RUNS" ]; then
  $PY -m labkit runs --runs-dir "$RUNS" > "$OUT/runs.txt"
  tar czf "$OUT/runs.tar.gz" --exclude='*.pt' --exclude='.lock' "$RUNS"
fi
echo "== end $(date -u +%FT%TZ)"
return $fail
}

main 2>&1 | tee "$OUT/log.txt"
rc=${PIPESTATUS[0]}
# What comes back is committed: name no folder of the machine it ran on.
for f in "$OUT"/*.txt "$OUT"/*.json; do
  [ -f "$f" ] && sed -i "s#$(pwd)/##g; s#$(cd "$OUT" && pwd)/#\$OUT/#g; s#$HOME/#~/#g; s#[^ ]*/site-packages/#<site-packages>/#g" "$f"
done
ls -la "$OUT"
exit "$rc"
