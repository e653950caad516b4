#!/usr/bin/env bash
# `ikd train`'s training rate on a CUDA GPU under this checkout's ikd and under an earlier one, from the
# repository root:
#   bash benchmarks/device/step_overhead.sh
# The runs alternate (before, after, before, after, ...) for ROUNDS rounds of EPOCHS epochs each, so the
# ratio is measured side by side in one session; ab_rate.py tabulates them (images/s over the epochs after
# the first) into $OUT/step_overhead.md. Then count_syncs.py counts each version's host-device waits in
# a training epoch ($OUT/syncs.txt). The earlier ikd is BEFORE_SRC (default .device/ikd-before/src), made
# on a machine with the git history by
#   mkdir -p .device/ikd-before && git archive REV src | tar -x -C .device/ikd-before
# and carried with .device/. Data as paper_cifar.sh (CIFAR10_DIR, or prepare.sh's .device/); DATASET=digits
# (with ARCH=vgg11, SYNC_ARGS="--device cpu --steps 2 --batch 8") runs the whole script on a CPU, as the tests do.
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

# arm NAME ROUND [PYTHONPATH first entry]: one `ikd train` from scratch (an old run of that name is replaced)
arm() {
    local dir=$WORK/$1-$2
    rm -rf "$dir"
    PYTHONPATH=${3:+$3:}$PYTHONPATH "$PYTHON" -m ikd train --dataset "$DATASET" "${data_args[@]}" --arch "$ARCH" \
        --epochs "$EPOCHS" --out "$dir" --quiet >"$dir.log" 2>&1
    echo "step_overhead.sh: $1 round $2 exit $? at ${SECONDS} s"
}

command -v nvidia-smi >/dev/null && device_gpu_rate "$OUT/gpu.txt"
for round in $(seq 1 "$ROUNDS"); do
    arm before "$round" "$before_path"
    arm after "$round"
done
"$PYTHON" benchmarks/device/ab_rate.py --runs "$WORK" --gpu "$OUT/gpu.txt" --markdown "$OUT/step_overhead.md"
: >"$OUT/syncs.txt"
for version in before after; do
    [ "$version" = before ] && first=$before_path: || first=""
    # shellcheck disable=SC2086  # SYNC_ARGS is a list of flags
    PYTHONPATH=$first$PYTHONPATH "$PYTHON" benchmarks/device/count_syncs.py --arch "$ARCH" --label "$version" \
        $SYNC_ARGS >>"$OUT/syncs.txt" 2>&1
done
cat "$OUT/syncs.txt"
cp "$WORK"/*.log "$OUT/" 2>/dev/null
exit 0
