# Sourced by the device scripts (paper_cifar.sh, teachers_cifar.sh): the set-up they share.
# `device_python SCRIPT` puts ikd from this checkout on PYTHONPATH and makes its dependencies
# importable (from the environment, else from prepare.sh's wheels); `device_cifar10 SCRIPT` sets
# data_dir to CIFAR10_DIR, or builds the JPEG-Q75 copy prepare.sh put in .device/. Both exit 2
# with one line naming SCRIPT when they cannot. `device_gpu_rate FILE` writes the GPU's measured bf16 matmul
# rate into FILE (and prints it): the reference for "fraction of peak" (training FLOPs = 6 x MACs per image).

device_python() {
    export PYTHONPATH=$PWD/src:$PWD/.device/site${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
    if ! "$PYTHON" -c "import pydantic" 2>/dev/null; then
        [ -d .device/wheels ] || { echo "$1: pydantic missing; run 'pip install -e .' (or prepare.sh for an offline machine)" >&2; exit 2; }
        "$PYTHON" -m pip install -q --no-index --find-links .device/wheels --target .device/site pydantic || exit 2
    fi
    "$PYTHON" -c "import ikd.cli" || { echo "$1: ikd does not import; run 'pip install -e .'" >&2; exit 2; }
}

device_cifar10() {
    if [ -n "${CIFAR10_DIR-}" ]; then
        data_dir=$CIFAR10_DIR
    elif [ -f .device/cifar10-jpeg75/build_batches.py ]; then
        data_dir=.cache/data
        "$PYTHON" .device/cifar10-jpeg75/build_batches.py "$data_dir" || exit 2
    else
        echo "$1: no CIFAR-10: set CIFAR10_DIR, or run benchmarks/device/prepare.sh first" >&2
        exit 2
    fi
}

device_gpu_rate() {
    "$PYTHON" - >"$1" <<'EOF'
import time, torch
name = torch.cuda.get_device_name()
a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
for _ in range(3):
    a @ a
torch.cuda.synchronize()
start, n = time.perf_counter(), 50
for _ in range(n):
    a @ a
torch.cuda.synchronize()
tflops = 2 * 8192**3 * n / (time.perf_counter() - start) / 1e12
print(f"{name}: measured bf16 matmul {tflops:.0f} TFLOP/s (8192^3, {n} runs), torch {torch.__version__}")
EOF
    cat "$1"
}
