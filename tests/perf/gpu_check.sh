#!/usr/bin/env bash
# The GPU check (issue #18), for one lent GPU machine: about 5 minutes on one H200, 8 at most.
#
#   bash tests/perf/gpu_check.sh OUT            # from the repository root; writes OUT/gpu_check.json
#   bash tests/perf/gpu_check.sh OUT --cpu-smoke   # the same driver on the CPU, tiny settings
#
# On the lent machine (one call of the device tool's `run`; the run folders stay outside $OUT, whose
# returned files are limited to 8): command `bash tests/perf/gpu_check.sh "$OUT" --work /tmp/gpu-check`,
# carry [".whl"], timeout_s 560. Commit the returned gpu_check.json under benchmark/results/.
#
# The lent machine (see the device README) has PyTorch with CUDA, Triton, timm, onnx, onnxscript, a CPU
# onnxruntime, typer and rich, but no package registry, no TensorRT and no pydantic. kdtool's missing
# pure-Python dependencies travel as wheels in the ignored folder .whl/ (never committed). Fetch them
# here, on a machine with the registry, for that machine's Python 3.12:
#
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#       -d .whl pydantic==2.13.4 pydantic-core==2.46.4 annotated-types==0.7.0 typing-inspection==0.4.2
#
# (pydantic and pydantic-core must be a matching pair: `unzip -p .whl/pydantic-2*.whl '*/METADATA' | grep
# pydantic-core` names it.) Then carry .whl with the working tree and run this script. TensorRT itself
# (`pip install "kdtool[tensorrt]"`: tensorrt>=10) is too large to carry (over the 64 MiB limit), so on
# that machine the engine parts are recorded as skipped with the reason; where tensorrt is installed they
# run. The ONNX Runtime CUDA/TensorRT providers need onnxruntime-gpu (likewise too large): recorded as
# absent when missing. ExecuTorch, coremltools and torchao are not needed: the check's recipe overrides
# use ONNX Runtime quantization and the onnx/tensorrt formats only.
set -uo pipefail

out=${1:?usage: gpu_check.sh OUT [--cpu-smoke]}
shift
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$root" || exit 2

if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/kdtool-site \
        .whl/*.whl || exit 2
    export PYTHONPATH="/tmp/kdtool-site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 KDTOOL_QUIET=1

mkdir -p "$out"
if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv >"$out/nvidia-smi.csv" 2>&1
fi
limit=480  # 8 minutes on the GPU; the CPU smoke on a shared 2-core box needs longer
[[ " $* " == *" --cpu-smoke "* ]] && limit=1500
timeout "$limit" python3 -m tests.perf.gpu_check "$out" "$@"
rc=$?
[ "$rc" = 124 ] && echo "gpu_check: stopped at its ${limit} s limit; $out/gpu_check.json holds the parts that finished" >&2
exit "$rc"
