#!/usr/bin/env bash
# One prepared GPU check (issue 16): about 5 minutes on one GPU, at most 8 (each part has its own time limit).
#
#   bash benchmarks/gpu_check.sh              # on a GPU machine, from the repository root or anywhere
#   bash benchmarks/gpu_check.sh --dry-run    # the same parts with tiny shapes on CPU (what CI runs)
#
# With the paper's model shapes and random weights, it prints:
#   1. Stage-I: ViT-B/32 CLIP-AD step, bf16, ZeRO-2 (benchmarks/stage1_zero.py): clips/s and peak memory.
#   2. Stage-II: the C3 captioner on GPT-2-124M, bf16, torch.compile (benchmarks/stage2_throughput.py): tokens/s and
#      MFU (goal >= 35%).
#   3. One ZeRO-3 LoRA step of a LLaMA-3-8B-shaped model, 8 of its 32 layers (benchmarks/zero3_lora_step.py): peak
#      memory and s/step.
#   4. Stage-I frame decoding (benchmarks/jpeg_decode.py): nvJPEG on the GPU (data.jpeg_decode=device) against PIL in
#      a loader worker, and how many CPU cores per GPU the worker path would need at part 1's clips/s; then a short
#      Stage-I job on SynthMAD with data.jpeg_decode=device and the JPEG tests, on the GPU.
#   5. With 2+ GPUs: `deepspeed --num_gpus 2 launch/stage2.sh` for 2 steps over NCCL on SynthMAD.
# STAGE1_SHARDS=DIR: part 4's job reads DIR/frames-train and DIR/frames-eval instead of generating SynthMAD.
# The load (`uptime`) and the GPUs (`nvidia-smi -L`) are printed first. A part that fails is reported and the
# others still run; the exit status is the number of parts that failed.
#
# Status: --dry-run runs in CI (tests/test_gpu_check.py). On one H200 (2026-11-30) every GPU part ran; the figures and
# which version of each part produced them are in README.md, "CPU threads and the GPU path".
set -uo pipefail

DRY=0
for a in "$@"; do
  case "$a" in
    --dry-run) DRY=1 ;;
    -h|--help) sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
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
    -e "use_cache=True" -e "^\s*$" | tee "$WORK/last.log"
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
  part "Stage-I frame decoding (dry run: 4 tiny JPEGs, torchvision's CPU decoder)" 60 \
    "$PY" benchmarks/jpeg_decode.py --dry-run
  echo
  echo "== 2-step NCCL run: needs 2+ GPUs; on them this script runs"
  echo "   deepspeed --num_gpus 2 launch/stage2.sh --train.max_steps 2 --eval.enabled false --tracking.enabled false ..."
  echo "   (the same launcher runs with 2 gloo ranks in tests/stage2/test_stage2_job.py)"
else
  part "Stage-I: ViT-B/32 CLIP-AD, bf16, ZeRO-2, 128 clips x 8 frames per step" 120 \
    "$PY" benchmarks/stage1_zero.py --model ViT-B-32 --bf16 --stages 2 --batch-size 128 --frames 8 --steps 10 --warmup 3
  CLIPS_PER_S=$(awk '$1 == "2" && $2 + 0 > 0 { print $2; exit }' "$WORK/last.log")
  part "Stage-II: C3 captioner on GPT-2-124M, bf16, torch.compile, 64 windows x 16 clips per step (MFU goal >= 35%)" \
    150 "$PY" benchmarks/stage2_throughput.py --llm gpt2-124m --device cuda --bf16 --compile --windows 64 \
    --d-model 512 --latents 10 --bases 64 --steps 10 --warmup 4
  part "ZeRO-3 LoRA step: LLaMA-3-8B-shaped, 8 layers, bf16" 150 \
    "$PY" benchmarks/zero3_lora_step.py --layers 8 --seq 1024 --steps 3
  part "Stage-I frame decoding: nvJPEG on the GPU vs PIL in a loader worker, 128 clips x 8 frames" 60 \
    "$PY" benchmarks/jpeg_decode.py --clips-per-s "${CLIPS_PER_S:-1000}"
  S1_DATA="--data.synth_dir '$WORK/synthmad1'"  # SynthMAD, generated (needs PyAV), or prebuilt frames shards:
  [ -n "${STAGE1_SHARDS:-}" ] && S1_DATA="--data.train_shards '$STAGE1_SHARDS/frames-train' \
    --data.eval_shards '$STAGE1_SHARDS/frames-eval'"
  part "Stage-I job with data.jpeg_decode=device (nvJPEG), tiny CLIP, SynthMAD frames, 20 steps; the CUDA JPEG test" 120 \
    bash -c "set -o pipefail; bash launch/stage1.sh launch/configs/stage1.yaml --run.out_dir '$WORK/s1' $S1_DATA \
      --tracking.enabled false --train.max_steps 20 --train.eval_every 0 --train.ckpt_every 0 --train.log_every 5 \
      --eval.figure false --data.jpeg_decode device 2>&1 | grep -E 'decoded|step [0-9]+/|summary|rror' \
      && '$PY' -m pytest -q -p no:cacheprovider tests/data/test_jpeg_device.py -k 'nvjpeg or check_jpeg or crop' \
      2>&1 | tail -2"
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
