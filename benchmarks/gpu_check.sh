#!/usr/bin/env bash
# One prepared GPU check (issue 16): about 5 minutes on one GPU, at most 8 (each part has its own time limit).
#
#   bash benchmarks/gpu_check.sh              # on a GPU machine, from the repository root or anywhere
#   bash benchmarks/gpu_check.sh --dry-run    # the same parts with tiny shapes on CPU (what CI runs)
#
# With the paper's model shapes and random weights, it prints:
#   1. Stage-I: ViT-B/32 CLIP-AD step, bf16, ZeRO-2 (benchmarks/stage1_zero.py): clips/s and peak memory.
#   2. Stage-II: the C3 captioner on GPT-2-124M, bf16 (benchmarks/stage2_throughput.py): tokens/s and MFU (goal >= 35%).
#   3. One ZeRO-3 LoRA step of a LLaMA-3-8B-shaped model, 8 of its 32 layers (benchmarks/zero3_lora_step.py): peak
#      memory and s/step.
#   4. With 2+ GPUs: `deepspeed --num_gpus 2 launch/stage2.sh` for 2 steps over NCCL on SynthMAD.
# The load (`uptime`) and the GPUs (`nvidia-smi -L`) are printed first. A part that fails is reported and the
# others still run; the exit status is the number of parts that failed.
#
# Status: it has run end to end on CPU with --dry-run (tests/test_gpu_check.py); it has NEVER run on a GPU yet.
set -uo pipefail

DRY=0
for a in "$@"; do
  case "$a" in
    --dry-run) DRY=1 ;;
    -h|--help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "error: unknown argument '$a' (usage: bash benchmarks/gpu_check.sh [--dry-run])" >&2; exit 2 ;;
  esac
done

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 2
PY="${PYTHON:-python}"
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
WORK="$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
FAILED=0
T0=$SECONDS

part() {  # part NAME LIMIT_S COMMAND...: run one part under a time limit, say how long it took and how it ended
  local name="$1" limit="$2"
  shift 2
  echo
  echo "== $name"
  local t=$SECONDS
  timeout --kill-after=10 "$limit" "$@" 2>&1 | grep -v -e "real_accelerator.py" -e "FutureWarning" -e "return func(" \
    -e "use_cache=True" -e "^\s*$"
  local rc=${PIPESTATUS[0]}
  if [ "$rc" -eq 0 ]; then
    echo "-- $name: ok in $((SECONDS - t)) s"
  else
    [ "$rc" -eq 124 ] && echo "-- $name: TIMED OUT after ${limit} s" || echo "-- $name: FAILED (exit $rc)"
    FAILED=$((FAILED + 1))
  fi
}

echo "gpu_check $([ $DRY -eq 1 ] && echo '--dry-run (tiny shapes, CPU)' || echo '(paper shapes, GPU)') in $ROOT"
uptime
NGPU=0
if [ $DRY -eq 0 ]; then
  if ! command -v nvidia-smi >/dev/null || ! nvidia-smi -L; then
    echo "error: no NVIDIA GPU visible (nvidia-smi -L failed); run with --dry-run on CPU" >&2
    exit 2
  fi
  NGPU=$(nvidia-smi -L | grep -c '^GPU')
  "$PY" -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda, 'bf16', torch.cuda.is_bf16_supported())"
fi

if [ $DRY -eq 1 ]; then
  export CUDA_VISIBLE_DEVICES=""
  part "Stage-I (dry run: distinctad-tiny CLIP, fp32, ZeRO-2, CPU)" 180 \
    "$PY" benchmarks/stage1_zero.py --stages 2 --batch-size 2 --frames 2 --steps 1 --warmup 1
  part "Stage-II (dry run: C3 on tiny GPT-2, fp32, CPU)" 120 \
    "$PY" benchmarks/stage2_throughput.py --windows 1 --clips 4 --frames 2 --steps 1 --warmup 1
  part "ZeRO-3 LoRA step (dry run: 2-layer 64-wide LLaMA, fp32, CPU)" 180 \
    "$PY" benchmarks/zero3_lora_step.py --dry-run --steps 1
  echo
  echo "== 2-step NCCL run: needs 2+ GPUs; on them this script runs"
  echo "   deepspeed --num_gpus 2 launch/stage2.sh --train.max_steps 2 --eval.enabled false --tracking.enabled false ..."
  echo "   (the same launcher runs with 2 gloo ranks in tests/stage2/test_stage2_job.py)"
else
  part "Stage-I: ViT-B/32 CLIP-AD, bf16, ZeRO-2, 128 clips x 8 frames per step" 150 \
    "$PY" benchmarks/stage1_zero.py --model ViT-B-32 --bf16 --stages 2 --batch-size 128 --frames 8 --steps 10 --warmup 3
  part "Stage-II: C3 captioner on GPT-2-124M, bf16 (MFU goal >= 35%)" 150 \
    "$PY" benchmarks/stage2_throughput.py --llm gpt2-124m --device cuda --bf16 --windows 8 --d-model 512 \
    --latents 10 --bases 64 --steps 20 --warmup 5
  part "ZeRO-3 LoRA step: LLaMA-3-8B-shaped, 8 layers, bf16" 150 \
    "$PY" benchmarks/zero3_lora_step.py --layers 8 --seq 1024 --steps 3
  if [ "$NGPU" -ge 2 ]; then
    part "2-step NCCL run: deepspeed --num_gpus 2 launch/stage2.sh" 120 \
      deepspeed --num_gpus 2 launch/stage2.sh --train.max_steps 2 --train.ckpt_every 0 --eval.enabled false \
      --tracking.enabled false --run.out_dir "$WORK/nccl" --data.synth_dir "$WORK/synthmad"
  else
    echo
    echo "== 2-step NCCL run: skipped ($NGPU GPU; needs 2+)"
  fi
fi

echo
uptime
echo "gpu_check: $FAILED part(s) failed, $((SECONDS - T0)) s in all"
exit "$FAILED"
