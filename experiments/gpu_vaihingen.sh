#!/usr/bin/env bash
# One GPU lease, prepared ahead: the paper-preset Vaihingen run (experiments/README.md) and the GPU
# sampling benchmark (docs/performance.md). From the repo root, on a CUDA machine, with the 256 px
# copy of the data that experiments/vaihingen_256.py writes:
#
#   bash experiments/gpu_vaihingen.sh .gpudata /tmp/runs OUT_FOLDER
#
# Stages, each logged to RUNS/<stage>.log; the deadline (SECONDS_TOTAL) stops a stage early enough
# for the benchmark and memory stages to run:
#   reproduce  train the preset for BUDGET minutes, then score its best checkpoint on the 68 test
#              images with K=30 (segdiff reproduce); step checkpoints every SAVE_EVERY steps
#   bench      benchmarks/sampling.py on that checkpoint: (a)-(d) and (e) bf16 autocast
#   memory     peak memory of K=30 generations at 256 px, max-batch 32 and 8
#   curve      test mIoU of every step checkpoint (K=CURVE_K): the curve of test IoU over steps
# OUT_FOLDER receives session.log and runs.tgz (everything but the checkpoints).
# A CPU dry run of the same stages: PRESET=tiny DEVICE=cpu PRECISION=fp32 BUDGET=0.3 EXTRA="--dataset vaihingen"
set -u
DATA=${1:?data root}; RUNS=${2:?runs folder}; OUT_DIR=${3:?folder for the results}
PRESET=${PRESET:-vaihingen}; BUDGET=${BUDGET:-3.5}; DEVICE=${DEVICE:-cuda}; PRECISION=${PRECISION:-bf16}
SAVE_EVERY=${SAVE_EVERY:-300}; CURVE_K=${CURVE_K:-4}; WORKERS=${WORKERS:-6}; SECONDS_TOTAL=${SECONDS_TOTAL:-540}
EXTRA=${EXTRA:-}
# The paper's sampler is 100-step DDPM; on the CPU model the 10-step SDE solver scored as well
# (experiments/README.md, "Sampling steps") at a tenth of the cost, which is what lets K=30 fit the lease.
SAMPLER="--set sample.sampler=sde-dpm-solver++ --set sample.num_sampling_steps=10"
RUN=$RUNS/$PRESET
mkdir -p "$RUNS" "$OUT_DIR"
exec > >(tee "$OUT_DIR/session.log") 2>&1
export PYTHONUNBUFFERED=1 TQDM_MININTERVAL=20  # progress bars: one update per 20 s in the logs

left() { echo $((SECONDS_TOTAL - SECONDS)); }
stage() {  # stage NAME NEED RESERVE COMMAND...: run COMMAND if NEED s are left, leaving RESERVE s to the rest
    local name=$1 need=$2 reserve=$3; shift 3
    if [ "$(left)" -lt "$need" ]; then echo "=== $name: skipped, $(left) s left"; return 1; fi
    echo "=== $name ($(date -u +%T), $(left) s left): $*"
    local start=$SECONDS
    timeout --signal=INT --kill-after=20 "$(( $(left) - reserve ))" "$@" > "$RUNS/$name.log" 2>&1
    local rc=$?
    echo "=== $name: exit $rc after $((SECONDS - start)) s"
    tr '\r' '\n' < "$RUNS/$name.log" | grep -v 'it/s\|s/it' | tail -n 25
    return $rc
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null
python3 -c "import torch, diffusers, segdiff; print('torch', torch.__version__, 'diffusers', diffusers.__version__,
  'cuda', torch.cuda.is_available() and torch.cuda.get_device_name())" || exit 1

stage reproduce 120 120 python3 -m segdiff.cli reproduce --preset "$PRESET" --data "$DATA" --out "$RUN" \
    --time-budget "$BUDGET" --workers "$WORKERS" --device "$DEVICE" --set train.precision="$PRECISION" \
    --set train.save_every="$SAVE_EVERY" --set train.keep_last=100 --set train.val_every="$SAVE_EVERY" \
    $SAMPLER $EXTRA
stage bench 60 40 python3 benchmarks/sampling.py --checkpoint "$RUN/best.safetensors" --images 2 --generations 4 \
    --device "$DEVICE" --autocast
stage memory-32 20 20 python3 benchmarks/sampling.py --memory-preset "$PRESET" --generations 30 --max-batch 32 \
    --device "$DEVICE"
stage memory-8 20 0 python3 benchmarks/sampling.py --memory-preset "$PRESET" --generations 30 --max-batch 8 \
    --device "$DEVICE"
for step in $(ls "$RUN" | sed -n 's/^last-\([0-9]*\)\.safetensors$/\1/p' | sort -n); do
    ckpt=$RUN/last-$step.safetensors
    stage "curve-$step" 30 0 python3 -m segdiff.cli evaluate "$ckpt" --dataset vaihingen --data "$DATA" \
        --generations "$CURVE_K" --sampler sde-dpm-solver++ --steps 10 --out "$RUN/curve/step-$step" \
        --device "$DEVICE"
done
tar czf "$OUT_DIR/runs.tgz" --exclude='*.safetensors' -C "$RUNS" .
echo "=== done after $SECONDS s"
