#!/bin/sh
# Train three teachers, then one student distilled from them, on the GPU machine (Keras on JAX: it has
# no TensorFlow) and bring each run folder back as $OUT/RUN.tar.xz. Unpack them in the repository root
# (`for f in DIR/*.tar.xz; do tar -xJf $f; done`) and convert here, where TensorFlow is:
# `ferlite convert runs/gpu-student/model.keras ...`. A run that runs out of time keeps its best epoch
# and its backup, and `ferlite train cnn -o runs/gpu-NAME --resume` finishes it on this machine.
#
#   sh training/gpu/pack.sh                                    # once, here
#   device run: carry ["gpu-kit"], timeout_s 600, command: sh training/gpu/run.sh
#
# Sizes: TEACHER_EPOCHS, STUDENT_EPOCHS, BATCH; TEACHER_S and STUDENT_S, each stage's seconds.
set -u
OUT=${OUT:-out}
DATA=../shared/data/fer2013  # where it is on the workstation too, so that --resume finds it there
export KERAS_BACKEND=${KERAS_BACKEND:-jax} XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1
rm -rf /tmp/site
python3 -m pip install -q --no-index --find-links gpu-kit/build --no-deps --no-compile --target /tmp/site \
  gpu-kit/wheels/*.whl . || exit 1
export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
mkdir -p "$DATA" runs "$OUT"
for split in train public_test; do
  [ -s "$DATA/$split.npz" ] || xz -dc "gpu-kit/$split.npz.xz" > "$DATA/$split.npz" || exit 1
done
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader

train() {  # seconds, run name, then `ferlite train cnn` options
  secs=$1 name=$2; shift 2
  timeout "$secs" python3 -m ferlite train cnn --data "$DATA/train.npz" --val "$DATA/public_test.npz" \
    -o "runs/$name" --batch-size "${BATCH:-128}" "$@" > "runs/$name.log" 2>&1
  echo "$name: exit $? after $(grep -c '^epoch' "runs/$name.log") epochs; $(grep '^epoch' "runs/$name.log" | tail -n 1)"
}
# Teachers side by side on the one GPU: different widths, augmentations and seeds, so their errors differ.
E=${TEACHER_EPOCHS:-100} S=${TEACHER_S:-300}
train "$S" gpu-t30 --width 3.0 --seed 1 --epochs "$E" &
train "$S" gpu-t25-erase --width 2.5 --seed 2 --erase 0.5 --epochs "$E" &
train "$S" gpu-t20-mixup --width 2.0 --seed 3 --mixup 0.2 --epochs "$E" &
wait
set --
for run in runs/gpu-t*/; do
  for f in model.keras best.keras; do [ -s "$run$f" ] && set -- "$@" --teacher "$run$f" && break; done
done
train "${STUDENT_S:-240}" gpu-student --width 1.5 --erase 0.5 --epochs "${STUDENT_EPOCHS:-200}" "$@"
for run in runs/gpu-*/; do  # best.keras is model.keras once a run has finished: one copy travels
  name=$(basename "$run")
  skip=; [ -s "$run/model.keras" ] && skip=--exclude=best.keras
  tar -cJf "$OUT/$name.tar.xz" $skip "runs/$name" "runs/$name.log"
done
ls -la "$OUT"
