"""Batch augmentation as Keras preprocessing layers, applied to each batch as it is drawn, never exported.

Batches come from a `keras.utils.PyDataset`, not `tf.data`, so the same training runs on any Keras
backend: TensorFlow on a workstation's CPU, JAX on a GPU machine that has no TensorFlow.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

AUGMENTATIONS = ("light", "full")


@dataclass(frozen=True)
class Augment:
    """How training batches are varied: `kind` names one of AUGMENTATIONS; `erase` is the share of faces
    that get one random patch replaced by noise (random erasing); `mixup` the alpha of mixup (0: off)."""

    kind: str = "light"
    erase: float = 0.0
    mixup: float = 0.0


def augmenter(aug: Augment) -> list:
    """Flip, shift (+-10 %), brightness (+-20 %) and contrast (+-30 %); `full` adds rotation (+-10 deg)
    and zoom (+-10 %), two more image warps per batch that tiny models may not have the capacity to use;
    `erase` then covers a patch of 2-33 % of the face in a share of the faces, as a hand or a turn would;
    `mixup` last blends each face and its target with another of the batch.

    A list of layers, applied in order by `batches()`, which gives them each batch's own seed."""
    from keras import layers

    warps = [layers.RandomTranslation(0.1, 0.1, fill_mode="reflect")]
    if aug.kind == "full":
        warps = [layers.RandomRotation(10 / 360, fill_mode="reflect"), *warps,
                 layers.RandomZoom(0.1, fill_mode="reflect")]
    erase = [layers.RandomErasing((aug.erase, aug.erase), value_range=(0, 255))] if aug.erase else []
    mix = [layers.MixUp(aug.mixup)] if aug.mixup else []
    return [
        layers.RandomFlip("horizontal"),
        *warps,
        layers.RandomBrightness(0.2, value_range=(0, 255)),
        layers.RandomContrast(0.3, value_range=(0, 255)),
        *erase,
        *mix,
    ]


def batches(images: np.ndarray, targets: np.ndarray, weights: np.ndarray, batch_size: int,
            augment: Augment | None, seed: int = 0):
    """uint8 (N, S, S) arrays -> a Keras PyDataset of float batches: reshuffled each epoch, full batches
    only and augmented when `augment` is given (training); in order and unchanged when it is None.

    Partial training batches are dropped: TF 2.21's oneDNN path can crash on them. Two worker threads
    augment the next batches while the model trains on this one; each batch draws its randomness from
    its own seed, made of (seed, epoch, batch index), so a run is the same whichever thread made it.
    """
    import keras

    class _Batches(keras.utils.PyDataset):
        def __init__(self) -> None:
            super().__init__(workers=2 if augment else 1)
            self.order = np.arange(len(images))
            self.rng = np.random.default_rng(seed)
            self.epoch = 0
            self.aug = augmenter(augment) if augment else []
            if augment:
                self.rng.shuffle(self.order)

        def __len__(self) -> int:
            n = len(images)
            return n // batch_size if augment else -(-n // batch_size)

        def __getitem__(self, i: int):
            pick = self.order[i * batch_size:(i + 1) * batch_size]
            x = images[pick][..., None].astype(np.float32)
            y, w = targets[pick], weights[pick]
            if not self.aug:
                return x, y, w
            state = int(np.random.SeedSequence([seed, self.epoch, i]).generate_state(1)[0])
            draws = keras.random.SeedGenerator(state)
            x, y = keras.ops.convert_to_tensor(x), keras.ops.convert_to_tensor(y)
            for layer in self.aug:
                change = layer.get_random_transformation({"images": x, "labels": y}, training=True, seed=draws)
                x = layer.transform_images(x, change, training=True)
                y = layer.transform_labels(y, change, training=True)
            return x, y, w

        def on_epoch_end(self) -> None:
            if augment:
                self.epoch += 1
                self.rng.shuffle(self.order)

    return _Batches()
