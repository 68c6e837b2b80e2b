#!/usr/bin/env bash
# One-command GPU check, under 8 minutes on a CUDA machine:
#   1. pip install -e ".[dev]", then try mamba-ssm + causal-conv1d (short time limit; go on without them)
#   2. our kernels on CUDA tensors with the real Triton compiler (TRITON_INTERPRET unset) vs the float64
#      reference, values and gradients, and mamba_ssm / causal_conv1d where they installed (bench/gpu_check.py)
#   3. the GPU table of bench/bench_core.py --device cuda: time and achieved GB/s over the bytes-moved floor
# On a machine without CUDA it says so and exits 0. Paste its output into bench/RESULTS.md.
#
#   bash bench/gpu_check.sh                     # PYTHON=python3.11 / GPU_CHECK_LENGTHS="4096 16384" to change
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
SMI=${GPU_CHECK_NVIDIA_SMI:-nvidia-smi}
BUDGET=${GPU_CHECK_BUDGET_S:-470}   # whole script, seconds (8 minutes less a margin)
START=$SECONDS
left() { echo $(( BUDGET - (SECONDS - START) )); }
step() { echo; echo "== $* ($(( SECONDS - START )) s)"; }

has_cuda() { "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" >/dev/null 2>&1; }

if ! "$SMI" -L >/dev/null 2>&1 && ! has_cuda; then
    echo "gpu_check: no CUDA GPU on this machine ($SMI not found or sees no GPU, and torch sees no CUDA);" \
         "nothing to check."
    exit 0
fi
"$SMI" -L 2>/dev/null || true
unset TRITON_INTERPRET   # the real compiler, not the interpreter

step "install: pip install -e .[dev]"
if ! timeout 240 "$PY" -m pip install -q -e ".[dev]"; then
    echo "warning: pip install -e .[dev] failed or took over 240 s; going on with what is installed"
fi
if ! has_cuda; then
    echo "gpu_check: a GPU is present but this torch has no CUDA ($("$PY" -c 'import torch; print(torch.__version__)' 2>&1));" \
         "install a CUDA build of torch first."
    exit 1
fi

step "install: mamba-ssm causal-conv1d (at most 150 s)"
if timeout 150 "$PY" -m pip install -q --no-build-isolation mamba-ssm causal-conv1d; then
    echo "installed"
else
    echo "not installed (pip failed or took over 150 s): comparing with the float64 reference only"
fi
"$PY" - <<'EOF'
for mod in ("mamba_ssm", "causal_conv1d", "triton"):
    try:
        m = __import__(mod)
        print(f"{mod} {getattr(m, '__version__', '?')}")
    except Exception as e:  # a broken build imports with an error
        print(f"{mod}: not available ({type(e).__name__})")
EOF

fails=0
step "kernels on CUDA vs the float64 reference (compiled Triton)"
if ! timeout "$(( $(left) > 60 ? $(left) - 30 : 30 ))" "$PY" bench/gpu_check.py; then
    echo "gpu_check: kernel check FAILED (or ran out of time)"
    fails=1
fi

step "bench/bench_core.py --device cuda"
lengths=${GPU_CHECK_LENGTHS:-4096}
if [ "$(left)" -gt 30 ]; then
    timeout "$(left)" "$PY" bench/bench_core.py --device cuda --cases scan ssd block --lengths $lengths \
        --min-time 0.5 --max-reps 10 \
        --timeout 90 || echo "bench_core: stopped (time budget of ${BUDGET} s reached or an error)"
else
    echo "skipped: no time left in the ${BUDGET} s budget"
fi

step "done"
exit $fails
