#!/usr/bin/env bash
# CIFAR-10 teachers with `ikd train`'s recipe on any CUDA machine (issue 17), from the repository root:
#   CIFAR10_DIR=/data/cifar10 bash benchmarks/device/teachers_cifar.sh
# TEACHERS lists ARCH:VARIANT runs, in order; a variant is the defaults plus its flags (VARIANTS
# below), so one GPU session can measure the recipe and one change at a time. Each run's record
# (benchmarks/teacher.py --existing: per-epoch raw and EMA validation accuracy, images/s, test
# accuracy of the saved weights) lands in $OUT as it ends, with the model.json files in
# teachers.tar.gz; weights stay under runs/teachers-device/. First it times a bf16 matmul on the
# GPU, so the records' images/s can be set against the GPU's measured peak (gpu.txt).
# With HARD_LIMIT_S > 0 each run gets `--time-limit` for what is left, so it stops at an epoch
# boundary, saves its state, and the same command resumes it later. Data as paper_cifar.sh.
# PARALLEL=N trains N runs at once: one CIFAR-10 VGG-16 fills about 8% of an H200's bf16 rate, and two side by
# side went 1.4x faster together than one alone (cifar_evidence.sh, 2026-12-04), so a recipe sweep fits a lease.
set -uo pipefail
OUT=${OUT:-runs/device-out}
PYTHON=${PYTHON:-python3}
CIFAR10_DIR=${CIFAR10_DIR-}
EPOCHS=${EPOCHS:-30}
HARD_LIMIT_S=${HARD_LIMIT_S:-0}  # 0: no limit
PARALLEL=${PARALLEL:-1}
TEACHERS=${TEACHERS-"vgg16:default vgg19:default vgg16:cutout"}
declare -A VARIANTS=(
    [default]=""
    [cutout]="--augment reflect-crop-flip-cutout"
    [wd1e-3]="--weight-decay 1e-3"
    [no-ema]="--ema-epochs 0"
    [no-ls]="--label-smoothing 0"
    [b512]="--batch-size 512 --lr 0.2"
    [onecycle]="--schedule onecycle"
    [lr0.05]="--lr 0.05"
    [cutout-wd1e-3]="--augment reflect-crop-flip-cutout --weight-decay 1e-3"
    [ls0.2]="--label-smoothing 0.2"
    [b128]="--batch-size 128 --lr 0.05"
    [b128-ls0.2]="--batch-size 128 --lr 0.05 --label-smoothing 0.2"
    [wd1e-3-ls0.2]="--weight-decay 1e-3 --label-smoothing 0.2"
)
mkdir -p "$OUT"

# shellcheck source=benchmarks/device/common.sh
. "$(dirname "$0")/common.sh"
device_python teachers_cifar.sh
[[ $PARALLEL =~ ^[1-9][0-9]*$ ]] || { echo "teachers_cifar.sh: PARALLEL=$PARALLEL: expected a count >= 1" >&2; exit 2; }
for run in $TEACHERS; do
    [ -n "${VARIANTS[${run#*:}]+set}" ] || { echo "teachers_cifar.sh: $run: unknown variant ${run#*:}; expected one of ${!VARIANTS[*]}" >&2; exit 2; }
done
# two runs of one ARCH:VARIANT at once would train into the same folder
repeated=$(printf '%s\n' $TEACHERS | sort | uniq -d | tr '\n' ' ')
[ -z "$repeated" ] || { echo "teachers_cifar.sh: TEACHERS lists ${repeated% } more than once" >&2; exit 2; }

device_cifar10 teachers_cifar.sh
[ -d "$data_dir/cifar-10-batches-py" ] && data_dir=$data_dir/cifar-10-batches-py

device_gpu_rate "$OUT/gpu.txt"

# train RUN (ARCH:VARIANT): `ikd train` under what is left of the limit, then its record in $OUT.
train() {
    local run=$1 arch=${1%%:*} variant=${1#*:} limit=() left code out_dir
    if ((HARD_LIMIT_S > 0)); then
        left=$((HARD_LIMIT_S - SECONDS))
        if ((left < 60)); then echo "teachers_cifar.sh: $run not started: ${left} s left"; return; fi
        limit=(--time-limit "$((left - 30))s")
    fi
    out_dir=runs/teachers-device/$arch-$variant
    # shellcheck disable=SC2086  # a variant is a list of flags
    "$PYTHON" -m ikd train --dataset cifar10 --data-dir "$data_dir" --arch "$arch" --epochs "$EPOCHS" \
        --out "$out_dir" ${VARIANTS[$variant]} "${limit[@]}" --quiet
    code=$?
    echo "teachers_cifar.sh: $run ended (exit $code) at ${SECONDS} s"
    if [ "$code" = 0 ]; then
        # shellcheck disable=SC2086
        "$PYTHON" benchmarks/teacher.py --existing --dataset cifar10 --data-dir "$data_dir" --arch "$arch" \
            --epochs "$EPOCHS" --out "$out_dir" --markdown "$OUT/teacher_cifar10_$arch-$variant.md" \
            --label "CIFAR-10 (JPEG-Q75)" --note "variant $variant: ${VARIANTS[$variant]:-the defaults}; $(cat "$OUT/gpu.txt")" \
            -- ${VARIANTS[$variant]} | tail -1
    fi
    pack
}

pack() {  # what has finished, without weights; one at a time as runs end side by side, so the newest wins
    (
        command -v flock >/dev/null && flock 9
        tar czf "$OUT/.teachers.tar.gz.tmp" --exclude='*.safetensors' --exclude='*.pt' runs/teachers-device 2>/dev/null
        mv -f "$OUT/.teachers.tar.gz.tmp" "$OUT/teachers.tar.gz"
    ) 9>"${TMPDIR:-/tmp}/teachers_cifar.sh.$$.lock"
}

for run in $TEACHERS; do
    while (($(jobs -rp | wc -l) >= PARALLEL)); do wait -n; done
    train "$run" &
done
wait
pack
echo "teachers_cifar.sh: done at ${SECONDS} s"
