#!/usr/bin/env bash
# Runs ON the GPU machine, from the repository root, after benchmarks/device/prepare.sh here:
#   run(command="bash benchmarks/device/paper_cifar.sh", carry=[".device"], timeout_s=540)
# It runs the CIFAR-10 (JPEG-Q75) rows of the paper table (ROWS, at the budget TEACHER_EPOCHS,
# STUDENT_EPOCHS, MAX_GENERATIONS, stated in the table), one teacher per architecture (paper.py shares
# it between rows); then, with the time left, EXTRA_ROWS at the config's own budget (EXTRA_ARGS), on the
# teacher the first phase trained, into a table of their own (extra.md), so both budgets can be compared.
# Every row runs under `timeout`, so the script always ends by HARD_LIMIT_S (keep it under the call's
# timeout_s) and packs what it has: after each row, $OUT holds the tables so far (with their .json
# records) and the rows' lineages (runs.tar.gz, weights and ONNX left out); a row cut short leaves its
# finished nodes there. QUICK=1 first checks the CUDA path end to end on digits (paper.py --quick).
# Try it here first with ROWS="" EXTRA_ROWS="" (set-up only).
set -uo pipefail
OUT=${OUT:-runs/device-out}
TEACHER_EPOCHS=${TEACHER_EPOCHS:-6}
STUDENT_EPOCHS=${STUDENT_EPOCHS:-1}
MAX_GENERATIONS=${MAX_GENERATIONS:-6}
HARD_LIMIT_S=${HARD_LIMIT_S:-500}
QUICK=${QUICK:-0}
ROW_ARGS=${ROW_ARGS-}  # more paper.py arguments for ROWS, e.g. --baselines
ROWS=${ROWS-"cifar10-vgg19-depth+width cifar10-vgg19-width cifar10-vgg19-depth"}
EXTRA_ROWS=${EXTRA_ROWS-"cifar10-vgg19-depth+width"}
EXTRA_ARGS=${EXTRA_ARGS-"--teacher cifar10-vgg19=runs/paper-device/cifar10-vgg19-depth+width/nodes/g0-teacher"}
mkdir -p "$OUT"

python3 -c "import pydantic" 2>/dev/null ||
    python3 -m pip install -q --no-index --find-links .device/wheels --target .device/site pydantic || exit 2
export PYTHONPATH=$PWD/src:$PWD/.device/site PYTHONUNBUFFERED=1
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA')"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader 2>/dev/null
python3 .device/cifar10-jpeg75/build_batches.py .cache/data || exit 2
echo "paper_cifar.sh: data ready at ${SECONDS} s"

if [ "$QUICK" = 1 ]; then
    timeout 120 python3 benchmarks/paper.py --quick --quiet --out runs/device-quick --markdown "$OUT/quick.md" | tail -1
fi

# run_row OUT_DIR TABLE ROW ARGS...: one row under what is left of HARD_LIMIT_S, then pack the results
run_row() {
    local out_dir=$1 table=$2 row=$3 left=$((HARD_LIMIT_S - SECONDS))
    shift 3
    if ((left < 30)); then echo "paper_cifar.sh: $row not started: ${left} s left"; return; fi
    timeout "$left" python3 benchmarks/paper.py --quiet --rows "$row" --data-dir cifar10=.cache/data \
        --out "$out_dir" "$@" --markdown "$OUT/$table" | tail -2
    echo "paper_cifar.sh: $row ended (exit ${PIPESTATUS[0]}) at ${SECONDS} s"
    tar czf "$OUT/runs.tar.gz" --exclude='*.safetensors' --exclude='*.onnx' runs/paper-device runs/extra-device 2>/dev/null
}

for row in $ROWS; do
    # shellcheck disable=SC2086  # ROW_ARGS is a list of arguments
    run_row runs/paper-device paper_cifar.md "$row" --teacher-epochs "$TEACHER_EPOCHS" \
        --student-epochs "$STUDENT_EPOCHS" --max-generations "$MAX_GENERATIONS" $ROW_ARGS
done
for row in $EXTRA_ROWS; do
    # shellcheck disable=SC2086  # EXTRA_ARGS is a list of arguments
    run_row runs/extra-device extra.md "$row" $EXTRA_ARGS
done
nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv,noheader 2>/dev/null
echo "paper_cifar.sh: done at ${SECONDS} s"
