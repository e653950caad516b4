#!/usr/bin/env bash
# The CIFAR-10 rows of the paper table on any CUDA machine, from the repository root:
#   CIFAR10_DIR=/data/cifar10 bash benchmarks/device/paper_cifar.sh
# It runs ROWS at the budget TEACHER_EPOCHS, STUDENT_EPOCHS, MAX_GENERATIONS (stated in the table),
# one teacher per architecture (paper.py shares it between rows); then EXTRA_ROWS at the config's
# own budget (EXTRA_ARGS), on the teacher the first phase trained, into a table of their own
# (extra.md), so both budgets can be compared. After each row, $OUT holds the tables so far (with
# their .json records) and the rows' lineages without weights (runs.tar.gz), small enough to copy
# back; weights stay under runs/. With HARD_LIMIT_S > 0 every row runs under `timeout`, so the
# script ends by then and a row cut short leaves its finished nodes. QUICK=1 first checks the CUDA
# path end to end on digits (paper.py --quick). ROWS="" EXTRA_ROWS="" checks the set-up alone.
# Data: CIFAR10_DIR (cifar-10-batches-py/ or the tarball in it), else the JPEG-Q75 source that
# prepare.sh put in .device/. See benchmarks/device/README.md.
set -uo pipefail
OUT=${OUT:-runs/device-out}
PYTHON=${PYTHON:-python3}
CIFAR10_DIR=${CIFAR10_DIR-}
TEACHER_EPOCHS=${TEACHER_EPOCHS:-6}
STUDENT_EPOCHS=${STUDENT_EPOCHS:-1}
MAX_GENERATIONS=${MAX_GENERATIONS:-6}
HARD_LIMIT_S=${HARD_LIMIT_S:-0}  # 0: no limit
QUICK=${QUICK:-0}
ROW_ARGS=${ROW_ARGS-}  # more paper.py arguments for ROWS, e.g. --baselines
ROWS=${ROWS-"cifar10-vgg19-depth+width cifar10-vgg19-width cifar10-vgg19-depth"}
EXTRA_ROWS=${EXTRA_ROWS-"cifar10-vgg19-depth+width"}
EXTRA_ARGS=${EXTRA_ARGS-"--teacher cifar10-vgg19=runs/paper-device/cifar10-vgg19-depth+width/nodes/g0-teacher"}
mkdir -p "$OUT"

# shellcheck source=benchmarks/device/common.sh
. "$(dirname "$0")/common.sh"
device_python paper_cifar.sh
"$PYTHON" -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA')"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader 2>/dev/null

device_cifar10 paper_cifar.sh
echo "paper_cifar.sh: data ready at ${SECONDS} s ($data_dir)"

if [ "$QUICK" = 1 ]; then
    timeout 300 "$PYTHON" benchmarks/paper.py --quick --quiet --out runs/device-quick --markdown "$OUT/quick.md" | tail -1
fi

# run_row OUT_DIR TABLE ROW ARGS...: one row (under what is left of HARD_LIMIT_S), then pack the results
run_row() {
    local out_dir=$1 table=$2 row=$3 limit=()
    shift 3
    if ((HARD_LIMIT_S > 0)); then
        local left=$((HARD_LIMIT_S - SECONDS))
        if ((left < 30)); then echo "paper_cifar.sh: $row not started: ${left} s left"; return; fi
        limit=(timeout "$left")
    fi
    "${limit[@]}" "$PYTHON" benchmarks/paper.py --quiet --rows "$row" --data-dir "cifar10=$data_dir" \
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
