#!/usr/bin/env bash
# The prepared check for a lent GPU machine, in one call (about 10 minutes on an H100; run it with the device
# tool's timeout_s=570 so that the limits below, not the tool's, end a stuck step):
#   1. tests/test_cuda.py and the CUDA tests of the benchmark harness: fused / single-path forms against a float64
#      reference, bf16 channels-last inference, AMP training (bf16, fp16), CUDA memory measurement, the memory
#      saved by gradient checkpointing (printed);
#   2. bench_latency.py's GPU preset: batch 256, bf16, channels-last; inference with CUDA graphs (eager, fused,
#      and single-path: is the concat's memory traffic worth the duplicated primary outputs on a GPU?)
#      and training steps, ours against timm's ghostnet_100 / mobilenetv3_large_100 and torchvision's;
#      its summary checks the issue's targets (>= 40,000 images/s inference, >= 9,000 training);
#   3. torch.compile of ghostnet_100 alone in training (whether compiling reaches the training target);
#   4. the family: RepGhostNet 1.0x and G-Ghost RegNetX-3.2GF beside GhostNet, MobileNetV3-Large, RegNetX-3.2GF and
#      ResNet-50 (eager and fused, batch 256, bf16, CUDA graphs): does the concat-free / depthwise-free design pay on
#      a GPU, as the papers say;
#   5. Ghost twins in training (docs/benchmarks.md, "Ghost twins: training speed"): Ghost-ResNet-56 and Ghost-VGG-16
#      beside ResNet-56 and VGG-16, batch 512, bf16 autocast, eager and compiled; printed to log.txt only;
#   6. last, as it may not fit the time: torch.compile of ghostnet_100 in inference, beside the fused eager form.
# The machine's own python3 (with torch, timm, onnx) runs the package from src/, nothing is installed.
# Outputs (at most 8 files come back from the device; every file left in the folder counts, so a step that adds
# none deletes what it writes after printing it): log.txt, gpu.{json,md}, gpu_train_b256.{json,md}, compile.md,
# family.md, compile_infer.md in ${OUT:-benchmarks/results/gpu}; each step writes its files as it ends, so a run
# stopped by the device's limit still returns the steps before.
set -uo pipefail
cd "$(dirname "$0")/.."
out_dir=$(realpath -m "${OUT:-benchmarks/results/gpu}")
mkdir -p "$out_dir"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  $py -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__, torch.cuda.get_device_name())"
  echo "== 1. CUDA tests"
  timeout 180 $py -m pytest -q -s -p no:cacheprovider tests/test_cuda.py \
    "tests/test_bench.py::test_cuda_bf16_channels_last"
  echo "== 2. GPU benchmark preset"
  (cd benchmarks && timeout 240 $py bench_latency.py --device cuda --rounds 5 --reps 10 --out "$out_dir/gpu")
  rm -f "$out_dir"/*.png  # keep within the 8 files that come back, also if a later step is cut off
  echo "== 3. torch.compile, ghostnet_100 training (the 9,000 images/s target; eager is in step 2)"
  timeout 150 $py -m ghostnet bench ghostnet_100 --peers "" --device cuda --dtype bfloat16 --batch-size 256 \
    --mode train --backends compile --threads 1 --rounds 5 --reps 10 --out-dir "$out_dir" --name compile --no-plot
  rm -f "$out_dir"/compile.json  # the .md has the numbers; keeps the outputs within 8 files
  echo "== 4. the Ghost family on the GPU: RepGhostNet (concat-free) and G-Ghost RegNet (no depthwise) beside GhostNet"
  timeout 150 $py -m ghostnet bench ghostnet_100 repghostnet_100 g_ghost_regnetx_032 \
    --peers timm:mobilenetv3_large_100,timm:regnetx_032,torchvision:resnet50 --device cuda --dtype bfloat16 \
    --batch-size 256 --backends eager,fused --cuda-graphs --threads 1 --rounds 3 --reps 10 --out-dir "$out_dir" \
    --name family --no-plot --reference timm/mobilenetv3_large_100/eager
  rm -f "$out_dir"/family.json
  echo "== 5. Ghost twins in training against the networks they halve (batch 512, bf16; printed here, no files)"
  timeout 150 $py -m ghostnet bench ghost_resnet56_cifar resnet56_cifar ghost_vgg16_cifar vgg16_cifar --peers "" \
    --device cuda --dtype bfloat16 --batch-size 512 --image-size 32 --mode train --backends eager,compile \
    --threads 1 --rounds 3 --reps 10 --out-dir "$out_dir" --name twins_train --no-plot \
    --reference resnet56_cifar/eager && cat "$out_dir/twins_train.md"
  rm -f "$out_dir"/twins_train.*
  echo "== 6. torch.compile, ghostnet_100 inference"
  timeout 100 $py -m ghostnet bench ghostnet_100 --peers "" --device cuda --dtype bfloat16 --batch-size 256 \
    --backends fused,compile --threads 1 --rounds 5 --reps 10 --out-dir "$out_dir" --name compile_infer --no-plot
  rm -f "$out_dir"/compile_infer.json
} 2>&1 | tee "$out_dir/log.txt"
