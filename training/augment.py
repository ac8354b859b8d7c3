"""Batch augmentation as Keras preprocessing layers, applied in tf.data and never exported."""

from __future__ import annotations

AUGMENTATIONS = ("light", "full")


def augmenter(kind: str = "light", seed: int = 0):
    """Flip, shift (+-10 %), brightness (+-20 %) and contrast (+-30 %); `full` adds rotation (+-10 deg)
    and zoom (+-10 %), two more image warps per batch that tiny models may not have the capacity to use."""
    import keras
    from keras import layers

    warps = [layers.RandomTranslation(0.1, 0.1, fill_mode="reflect", seed=seed + 2)]
    if kind == "full":
        warps = [layers.RandomRotation(10 / 360, fill_mode="reflect", seed=seed + 1), *warps,
                 layers.RandomZoom(0.1, fill_mode="reflect", seed=seed + 3)]
    return keras.Sequential(
        [
            layers.RandomFlip("horizontal", seed=seed),
            *warps,
            layers.RandomBrightness(0.2, value_range=(0, 255), seed=seed + 4),
            layers.RandomContrast(0.3, value_range=(0, 255), seed=seed + 5),
        ],
        name="augment",
    )


def batches(images, targets, weights, batch_size: int, augment: str | None, seed: int = 0):
    """uint8 (N, S, S) arrays -> a tf.data pipeline of float batches; `augment` names one of
    AUGMENTATIONS for training (shuffled, full batches only) or is None for evaluation.

    Partial batches are dropped in training: TF 2.21's oneDNN path can crash on them.
    """
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices((images[..., None], targets, weights))
    if augment:
        aug = augmenter(augment, seed)
        ds = ds.shuffle(len(images), seed=seed, reshuffle_each_iteration=True)
        ds = ds.batch(batch_size, drop_remainder=True)
        ds = ds.map(lambda x, y, w: (aug(tf.cast(x, tf.float32), training=True), y, w),
                    num_parallel_calls=tf.data.AUTOTUNE)
    else:
        ds = ds.batch(batch_size).map(lambda x, y, w: (tf.cast(x, tf.float32), y, w))
    return ds.prefetch(tf.data.AUTOTUNE)
