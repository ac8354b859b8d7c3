#!/bin/sh
# Pack what training on the GPU machine needs and cannot fetch there: FER2013's train and PublicTest
# faces (xz, ~57 MB: the whole tree that travels must stay under 64 MiB) and the wheels of Keras and
# the two packages it needs beyond that machine's image (which has JAX but no TensorFlow or Keras), and
# setuptools to build ferlite from the tree that travels.
# Run once from the repository root; writes gpu-kit/ (git-ignored), then see run.sh. PYVER: the
# Python there (3.12 in its image, KINDS.md).
set -eu
DATA=${DATA:-../shared/data/fer2013}
KIT=gpu-kit
mkdir -p "$KIT/wheels"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "${PYVER:-3.12}" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d "$KIT/wheels" "keras==3.15.1" "namex==0.1.0" "optree==0.20.0"
python3 -m pip download -q --no-deps --only-binary=:all: -d "$KIT/build" "setuptools>=77"  # builds ferlite there
for split in train public_test; do
  [ -s "$KIT/$split.npz.xz" ] && continue
  # np.savez, not savez_compressed: xz compresses raw faces to 80 %, deflated ones not at all.
  python3 -c "import numpy as np, sys; d = np.load(sys.argv[1]); np.savez(sys.argv[2], **{k: d[k] for k in d.files})" \
    "$DATA/$split.npz" "$KIT/$split.npz"
  xz -T0 -6 "$KIT/$split.npz"
done
du -sh "$KIT"
