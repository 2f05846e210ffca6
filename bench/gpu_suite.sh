#!/usr/bin/env bash
# The GPU figures of the README's "Issue 8 on one H100" section, in one run on a lent H100/H200:
# a whole ResNet-18 job at CIFAR-10 size (50,000 train, 10,000 test, the reference protocol's
# defaults), a WRN-34-10 job at reduced size (per-stage images/s), and the tests that need CUDA.
#
#     OUT=/some/folder bash bench/gpu_suite.sh [resnet18] [wrn] [mrc] [stacked] [chunks] [tests]
#     (default: all)
#
# The GPU image has PyTorch but not pydantic: wheels for it may sit in .gpuwheels/ (untracked and
# not git-ignored, so that a copy of the working tree carries them; never commit them;
# `pip download pydantic==<ours> --python-version 3.12 --only-binary=:all: -d .gpuwheels`).
set -u
py="${PYTHON:-python3}"
out="${OUT:?set OUT to the folder for the reports}"
mkdir -p "$out"
if ! "$py" -c "import pydantic" 2>/dev/null; then
  "$py" -m pip install --quiet --no-deps --no-index --target /tmp/gpu-extra .gpuwheels/*.whl
  export PYTHONPATH="/tmp/gpu-extra"
fi
export PYTHONPATH="$PWD:$PWD/bench:${PYTHONPATH:-}"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  "$py" -c "import torch; print('torch', torch.__version__, torch.version.cuda)"; } >"$out/gpu.txt" 2>&1

parts="${*:-resnet18 wrn mrc stacked chunks tests}"
want() { [[ " $parts " == *" $1 "* ]]; }

want resnet18 && { timeout 300 "$py" bench/pipeline.py --train 50000 --test 10000 --precision bf16 --channels-last \
  --nondeterministic --output "$out/pipeline_resnet18_cifar_size_bf16.json" >"$out/resnet18.log" 2>&1
  echo "resnet18 rc=$?" >>"$out/gpu.txt"; }
want wrn && { timeout 170 "$py" bench/pipeline.py --arch wide_resnet34_10 --train 10000 --test 1000 --epochs 1 \
  --alpha-step 0.5 --precision bf16 --channels-last --nondeterministic \
  --output "$out/pipeline_wrn34_10_reduced_bf16.json" >"$out/wrn34_10.log" 2>&1
  echo "wrn34_10 rc=$?" >>"$out/gpu.txt"; }
# MRC against the reference code's cost at the reference protocol (1,024 examples, 10 passes).
want mrc && for mode in fp32 bf16; do
  extra=(); [ "$mode" = bf16 ] && extra=(--precision bf16 --channels-last)
  timeout 150 "$py" bench/mrc.py --examples 1024 --steps 10 --batch-size 512 --skip-full \
    "${extra[@]}" >"$out/mrc_reference_cost_resnet18_$mode.json" 2>>"$out/mrc.log"
  echo "mrc $mode rc=$?" >>"$out/gpu.txt"
done
# Several modules' ascent at once (mrc.module_batch, rift/mrc_stacked.py) against one at a time,
# interleaved in one process, at the reference protocol (1,024 examples, 10 passes, batch 512) and
# at a small batch (128) where one module's batch leaves the GPU idle. fp32 only: module_batch
# runs bf16 one module at a time (vmap skips autocast for convolutions with stacked weights).
want stacked && for batch in 512 128; do
  timeout 150 "$py" bench/mrc.py --examples 1024 --steps 10 --batch-size "$batch" \
    --module-batch 2 4 8 --repeats 2 \
    --output "$out/mrc_module_batch_resnet18_fp32_batch$batch.json" >/dev/null 2>>"$out/stacked.log"
  echo "stacked batch $batch rc=$?" >>"$out/gpu.txt"
done
# The α selection's stop chunks on a GPU: whole batches (the default there) against the CPU's
# 64-example floor, on a PGD-trained ResNet-18 (512 test images, PGD-10, 21 points).
want chunks && for floor in 0 64; do
  extra=(); [ "$floor" = 64 ] && extra=(--min-stop-chunk 64)
  timeout 240 "$py" bench/interpolation.py --device cuda --skip-digits --resnet-train 2048 \
    --resnet-test 512 --resnet-attack-steps 10 --resnet-at-epochs 5 "${extra[@]}" \
    >"$out/interpolation_selection_resnet18_chunks_$floor.json" 2>>"$out/chunks.log"
  echo "chunks $floor rc=$?" >>"$out/gpu.txt"
done
want tests && { timeout 90 "$py" -m pytest -q -p no:cacheprovider --noconftest tests/rift/test_checkpoints.py \
  tests/rift/test_data.py tests/rift/test_batch_backoff.py tests/rift/test_device.py \
  tests/rift/test_attacks.py >"$out/cuda_tests.txt" 2>&1
  echo "tests rc=$?" >>"$out/gpu.txt"; }
