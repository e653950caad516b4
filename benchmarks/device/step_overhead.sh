#!/usr/bin/env bash
# `ikd train`'s training rate on a CUDA GPU under this checkout's ikd and under an earlier one, from the
# repository root:
#   bash benchmarks/device/step_overhead.sh
# The runs alternate for ROUNDS rounds of EPOCHS epochs each (before then after in odd rounds, after then
# before in even ones), so the ratio is measured side by side in one session; ab_rate.py tabulates them
# (images/s over the epochs after the first) into $OUT/step_overhead.md after every round, with the runs'
# logs (each names the ikd it imported) and model.json files in $OUT/logs.tar.gz. Then count_syncs.py
# counts each version's host-device waits in a training epoch ($OUT/syncs.txt). With HARD_LIMIT_S > 0
# nothing starts after that many seconds. The earlier ikd is BEFORE_SRC (default .device/ikd-before/src), made
# on a machine with the git history by
#   mkdir -p .device/ikd-before && git archive REV src | tar -x -C .device/ikd-before
# and carried with .device/. Data as paper_cifar.sh (CIFAR10_DIR, or prepare.sh's .device/); DATASET=digits
# (with ARCH=vgg11, SYNC_ARGS="--device cpu --steps 2 --batch 8") runs the whole script on a CPU; the tests give
# ARCH a small layout line, which needs a BEFORE_SRC of 2026-12-06 or later (earlier ikd takes presets only).
set -uo pipefail
OUT=${OUT:-runs/device-out}
PYTHON=${PYTHON:-python3}
CIFAR10_DIR=${CIFAR10_DIR-}
ROUNDS=${ROUNDS:-3}
EPOCHS=${EPOCHS:-2}
ARCH=${ARCH:-vgg16}
DATASET=${DATASET:-cifar10}
SYNC_ARGS=${SYNC_ARGS-}
BEFORE_SRC=${BEFORE_SRC:-.device/ikd-before/src}
WORK=${WORK:-runs/step-overhead}
HARD_LIMIT_S=${HARD_LIMIT_S:-0}  # 0: no limit
rm -rf "$WORK"  # runs of an earlier call would count in this one's medians
mkdir -p "$OUT" "$WORK"

# shellcheck source=benchmarks/device/common.sh
. "$(dirname "$0")/common.sh"
device_python step_overhead.sh
[ -f "$BEFORE_SRC/ikd/__init__.py" ] || { echo "step_overhead.sh: no earlier ikd at $BEFORE_SRC/ikd (see the header)" >&2; exit 2; }
[[ $ROUNDS =~ ^[1-9][0-9]*$ && $EPOCHS =~ ^[1-9][0-9]*$ ]] || { echo "step_overhead.sh: ROUNDS and EPOCHS must be counts >= 1" >&2; exit 2; }
data_args=()
if [ "$DATASET" = cifar10 ]; then
    device_cifar10 step_overhead.sh
    data_args=(--data-dir "$data_dir")
fi
before_path=$(cd "$BEFORE_SRC" && pwd)

left() { echo $((HARD_LIMIT_S > 0 ? HARD_LIMIT_S - SECONDS : 86400)); }

# arm NAME ROUND [PYTHONPATH first entry]: one `ikd train` from scratch, its log naming the ikd it imported
arm() {
    local dir=$WORK/$1-$2 path=${3:+$3:}$PYTHONPATH
    (($(left) > 10)) || { echo "step_overhead.sh: $1 round $2 not started: $(left) s left"; return 1; }
    PYTHONPATH=$path "$PYTHON" -c "import ikd; print('ikd from', ikd.__file__)" >"$dir.log" 2>&1
    PYTHONPATH=$path timeout "$(left)" "$PYTHON" -m ikd train --dataset "$DATASET" "${data_args[@]}" \
        --arch "$ARCH" --epochs "$EPOCHS" --out "$dir" --quiet >>"$dir.log" 2>&1
    echo "step_overhead.sh: $1 round $2 exit $? at ${SECONDS} s"
}

command -v nvidia-smi >/dev/null && device_gpu_rate "$OUT/gpu.txt"
for round in $(seq 1 "$ROUNDS"); do
    if ((round % 2)); then
        arm before "$round" "$before_path" && arm after "$round"
    else
        arm after "$round" && arm before "$round" "$before_path"
    fi
    tar czf "$OUT/logs.tar.gz" -C "$WORK" --exclude='*.safetensors' --exclude='*.pt' --exclude='*.onnx' .
    "$PYTHON" benchmarks/device/ab_rate.py --runs "$WORK" --gpu "$OUT/gpu.txt" --markdown "$OUT/step_overhead.md" |
        tail -1
done
: >"$OUT/syncs.txt"
for version in before after; do
    (($(left) > 20)) || { echo "step_overhead.sh: no sync count for $version: $(left) s left" | tee -a "$OUT/syncs.txt"; continue; }
    [ "$version" = before ] && first=$before_path: || first=""
    # shellcheck disable=SC2086  # SYNC_ARGS is a list of flags
    PYTHONPATH=$first$PYTHONPATH timeout "$(left)" "$PYTHON" benchmarks/device/count_syncs.py --arch "$ARCH" \
        --label "$version" $SYNC_ARGS >>"$OUT/syncs.txt" 2>&1
done
cat "$OUT/syncs.txt"
exit 0
