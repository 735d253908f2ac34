#!/usr/bin/env bash
# The GPU checks in one call, on a machine with a CUDA GPU, in at most 8 minutes once its Python is ready:
#   1. the CUDA tests (`pytest -m cuda`: tests/test_cuda.py, the fast paths' CUDA graph, SDPA with the
#      locality mask): fast paths and SDPA's kernels against the CPU reference, a bf16 training step,
#      train.compile with a run that resumes, serving on the GPU, `vitlab study --jobs` on one GPU;
#   2. benchmarks/throughput.py's GPU set for ViT-B/16 in bf16: vitlab beside timm and transformers, inference
#      and a training step, eager then compiled, with utilisation (MFU) against the datasheet bf16 peak.
# It writes one markdown file (gpu_check.md, or the path given) and exits non-zero if anything failed.
# On a machine without a CUDA GPU it says so in one line and exits 0.
#
#   bash benchmarks/gpu_check.sh [OUT.md]
#   bash benchmarks/gpu_check.sh --smoke [OUT.md]     # the CUDA tests and throughput.py --smoke: that it runs
#
# Python: $GPU_CHECK_PYTHON, used as it is, when set. Otherwise .venv-gpu (made here the first time, seeing
# the system's packages, so a torch installed there is used); if its torch does not see the GPU it installs
# torch==2.13.0 from PyPI (PyPI's Linux wheel is the CUDA build) and torchvision to match, then the test and
# peer packages at constraints.txt's pins and timm. Without a reachable package index on a bare machine the
# install fails, and so does the check, saying so. vitlab itself runs from this checkout.
set -uo pipefail
SMOKE=
if [ "${1:-}" = "--smoke" ]; then SMOKE=1; shift; fi
OUT=${1:-gpu_check.md}
case $OUT in /*) ;; *) OUT=$PWD/$OUT ;; esac
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"  # this checkout's vitlab, in child processes too
TORCH=2.13.0 TORCHVISION=0.28.0 TIMM=1.0.31
TESTS_S=${GPU_CHECK_TESTS_S:-180}
EAGER_S=${GPU_CHECK_EAGER_S:-90}
COMPILED_S=${GPU_CHECK_COMPILED_S:-200}

if ! gpus=$("${GPU_CHECK_NVIDIA_SMI:-nvidia-smi}" -L 2>/dev/null) || [ -z "$gpus" ]; then
    echo "gpu_check: no CUDA GPU on this machine (nvidia-smi lists none); nothing to check"
    exit 0
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
failures=()

sees_gpu() { "$1" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' >/dev/null 2>&1; }

prepare_python() {
    if [ -n "${GPU_CHECK_PYTHON:-}" ]; then
        PY=$GPU_CHECK_PYTHON
        return
    fi
    PY=.venv-gpu/bin/python
    [ -x "$PY" ] || python3 -m venv --system-site-packages .venv-gpu || return 1
    if ! sees_gpu "$PY"; then
        "$PY" -m pip install -q "torch==$TORCH" "torchvision==$TORCHVISION" || return 1
    fi
    grep -v '^torch==' constraints.txt > "$work/constraints.txt"
    "$PY" -m pip install -q -c "$work/constraints.txt" -e '.[test,serve]' "timm==$TIMM" || return 1
}

echo "gpu_check: $gpus"
setup_start=$SECONDS
if ! prepare_python; then
    echo "gpu_check: FAILED to install torch $TORCH and the test packages (is a package index reachable?)" | tee "$OUT"
    exit 1
fi
if ! sees_gpu "$PY"; then
    echo "gpu_check: FAILED: torch in $PY does not see the GPU ($("$PY" -c 'import torch; print(torch.__version__)' 2>&1 | tail -1))" | tee "$OUT"
    exit 1
fi
setup_s=$((SECONDS - setup_start))
start=$SECONDS
versions=$("$PY" -c 'import torch; print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.get_device_name()}")')
echo "gpu_check: $versions (Python ready in ${setup_s}s)"

# 1. the CUDA tests
timeout "$TESTS_S" "$PY" -m pytest -o addopts= -m cuda -q -rfEs -p no:cacheprovider tests > "$work/tests.log" 2>&1
tests_rc=$?
[ "$tests_rc" -eq 0 ] || failures+=("CUDA tests (pytest exit $tests_rc$([ "$tests_rc" -eq 124 ] && echo ", over ${TESTS_S}s"))")
tests_s=$((SECONDS - start))
tail -n 30 "$work/tests.log"

# 2. the side-by-side throughput: eager first, so a slow compile still leaves a table
throughput() {  # MODE SECONDS
    local t0=$SECONDS rc
    local size=(--models ViT-B/16 --rounds 3)
    [ -z "$SMOKE" ] || size=(--smoke)
    timeout "$2" "$PY" benchmarks/throughput.py "${size[@]}" --precisions bf16 --modes "$1" --no-memory-case \
        --markdown "$work/$1.md" --json "$work/$1.json" > "$work/$1.log" 2>&1
    rc=$?
    tail -n 5 "$work/$1.log"
    [ "$rc" -eq 0 ] || failures+=("throughput $1 (exit $rc$([ "$rc" -eq 124 ] && echo ", over ${2}s"))")
    [ -s "$work/$1.md" ] || echo "(no table: the run failed; the end of its output:)" > "$work/$1.md"
    [ "$rc" -eq 0 ] || tail -n 15 "$work/$1.log" | sed 's/^/    /' >> "$work/$1.md"
    echo "$1: $((SECONDS - t0))s"
}
throughput eager "$EAGER_S"
throughput compile "$COMPILED_S"
total_s=$((SECONDS - start))

{
    echo "# GPU check: $versions"
    echo
    echo "\`bash benchmarks/gpu_check.sh\`, $(date -u '+%Y-%m-%d %H:%M UTC'); ${total_s}s after ${setup_s}s of setup."
    echo
    echo "## CUDA tests (\`pytest -m cuda\`, ${tests_s}s): $(grep -E '(passed|failed|error|skipped)' "$work/tests.log" | tail -n 1)"
    echo
    grep -E '^(FAILED|ERROR|SKIPPED)' "$work/tests.log" | sed 's/^/- /'
    echo
    echo "## Throughput: ViT-B/16 bf16, vitlab beside timm and transformers"
    echo
    cat "$work/eager.md"
    echo
    cat "$work/compile.md"
    echo
    if [ ${#failures[@]} -eq 0 ]; then echo "Result: every check passed."; else
        printf "Result: FAILED: %s\n" "$(printf "%s; " "${failures[@]}")"; fi
} > "$OUT"
echo "gpu_check: wrote $OUT (${total_s}s)"
[ ${#failures[@]} -eq 0 ] || { echo "gpu_check: FAILED: ${failures[*]}"; exit 1; }
