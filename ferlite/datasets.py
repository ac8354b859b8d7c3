"""Datasets as uint8 arrays: FER2013's Kaggle CSV, `.npz` files and a folder per class.

numpy and OpenCV only, so `ferlite eval` works on the device. Every format gives a `Dataset`
with canonical label names; a bad file raises DatasetError naming the file (and row).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ferlite.errors import DatasetError
from ferlite.labels import FER7, FERPLUS, canonical, ferplus_targets, ferplus_votes, remap
from ferlite.preprocess import PreprocessSpec, fit_images, to_gray

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
FER2013_USAGES = ("Training", "PublicTest", "PrivateTest")


@dataclass(frozen=True)
class Dataset:
    """Images (uint8, N x H x W, grayscale) with integer labels into `label_names`.

    `index` is each image's row in the source file (FER+ votes are looked up by it) and `subjects`
    the person in each image, when the source records them.
    """

    images: np.ndarray
    labels: np.ndarray
    label_names: tuple[str, ...]
    source: str
    index: np.ndarray | None = None
    subjects: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, mask_or_idx: np.ndarray) -> Dataset:
        """The same dataset restricted to a boolean mask or index array."""
        pick = lambda a: None if a is None else a[mask_or_idx]  # noqa: E731
        return replace(self, images=self.images[mask_or_idx], labels=self.labels[mask_or_idx],
                       index=pick(self.index), subjects=pick(self.subjects))

    def split(self, share: float, seed: int = 0) -> tuple[Dataset, Dataset]:
        """(rest, held): about `share` of the images held out, by whole subjects when the dataset knows
        them (a model is then judged on people it never saw), else stratified by label."""
        rng = np.random.default_rng(seed)
        if self.subjects is not None and len(np.unique(self.subjects)) >= 2:
            people = rng.permutation(np.unique(self.subjects))
            counts = np.array([(self.subjects == s).sum() for s in people])
            take = max(1, min(len(people) - 1, int(np.searchsorted(np.cumsum(counts), share * len(self)) + 1)))
            held = np.isin(self.subjects, people[:take])
        else:
            held = np.zeros(len(self), dtype=bool)
            for code in np.unique(self.labels):
                members = rng.permutation(np.flatnonzero(self.labels == code))
                held[members[: max(1, round(share * len(members)))] if len(members) > 1 else []] = True
        if held.all() or not held.any():
            raise DatasetError(f"{self.source}: too few images to hold {share:.0%} out")
        return self.subset(~held), self.subset(held)

    def relabel(self, names: tuple[str, ...]) -> Dataset:
        """Labels expressed in another label set; images whose class it lacks are dropped."""
        if tuple(names) == self.label_names:
            return self
        codes = remap(self.labels, self.label_names, tuple(names))
        keep = codes >= 0
        if not keep.any():
            raise DatasetError(f"{self.source}: none of its classes exist in {', '.join(names)}")
        return replace(self.subset(keep), labels=codes[keep], label_names=tuple(names))

    def ferplus_votes(self, csv_path: str | Path | None = None) -> np.ndarray:
        """The FER+ votes (N x 10) of these FER2013 faces; the votes file defaults to fer2013new.csv beside
        the dataset."""
        if self.index is None:
            raise DatasetError(f"{self.source}: FER+ votes need FER2013 row numbers ('index' in the .npz or a CSV)")
        return ferplus_votes(csv_path or Path(self.source).parent / "fer2013new.csv", self.index)

    def with_ferplus_labels(self, csv_path: str | Path | None = None) -> tuple[Dataset, np.ndarray]:
        """FER2013 faces relabelled by FER+ (ten annotators per face, Barsoum et al. 2016): the majority
        label, and each face's vote shares (N x 8). Faces voted unknown or not-a-face, or tied, are
        dropped. The votes file defaults to fer2013new.csv beside the dataset."""
        votes = self.ferplus_votes(csv_path)
        majority, keep = ferplus_targets(votes)
        shares, _ = ferplus_targets(votes, soft=True)
        return replace(self.subset(keep), labels=majority[keep], label_names=FERPLUS), shares[keep]


def load_dataset(spec: str | Path, spec_size: PreprocessSpec | None = None) -> Dataset:
    """Load `path`, `path.csv:Usage` (FER2013 split), `file.npz` or a folder per class.

    With `spec_size`, images are resized to the model input through the shared preprocessing;
    without it, all images must share one size.
    """
    text = str(spec)
    path, usage = Path(text), None
    if not path.exists() and ":" in text:
        head, _, tail = text.rpartition(":")
        if tail in FER2013_USAGES:
            path, usage = Path(head), tail
    if not path.exists():
        raise DatasetError(f"{path}: no such file or folder")
    if path.is_dir():
        data = _load_folder(path, spec_size)
    elif path.suffix == ".npz":
        data = _load_npz(path)
    elif path.suffix == ".csv":
        data = _load_fer_csv(path, usage)
    else:
        raise DatasetError(f"{path}: unknown dataset format (expected a folder, .npz or FER2013 .csv)")
    if len(data) == 0:
        raise DatasetError(f"{spec}: holds no images")
    if spec_size is not None:
        data = replace(data, images=fit_images(data.images, spec_size))
    return data


def _load_npz(path: Path) -> Dataset:
    try:
        npz = np.load(path, allow_pickle=False)
        files = set(npz.files)
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{path}: not a readable .npz file ({exc})") from None
    missing = {"images", "labels"} - files
    if missing:
        raise DatasetError(f"{path}: missing array(s) {', '.join(sorted(missing))}")
    images, labels = npz["images"], npz["labels"].astype(np.int64)
    if images.dtype != np.uint8 or images.ndim not in (3, 4):
        raise DatasetError(f"{path}: 'images' must be uint8 (N, H, W), got {images.dtype} {images.shape}")
    if images.ndim == 4:
        images = np.stack([to_gray(img) for img in images])
    if len(images) != len(labels):
        raise DatasetError(f"{path}: {len(images)} images but {len(labels)} labels")
    names = tuple(canonical(str(n)) for n in npz["label_names"]) if "label_names" in files else FER7
    if len(labels) and (labels.min() < 0 or labels.max() >= len(names)):
        raise DatasetError(f"{path}: label codes outside 0..{len(names) - 1}")
    return Dataset(images, labels, names, str(path),
                   index=npz["index"] if "index" in files else None,
                   subjects=npz["subjects"] if "subjects" in files else None)


def _load_fer_csv(path: Path, usage: str | None) -> Dataset:
    images, labels, rows = [], [], []
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        need = {"emotion", "pixels"}
        if not reader.fieldnames or not need <= set(reader.fieldnames):
            raise DatasetError(f"{path}: expected FER2013 columns emotion,pixels[,Usage]")
        for row_no, row in enumerate(reader):
            if usage and row.get("Usage") != usage:
                continue
            line = row_no + 2
            try:
                label = int(row["emotion"])
                pixels = np.array(row["pixels"].split(), dtype=np.int64)
            except (ValueError, AttributeError):
                raise DatasetError(f"{path}:{line}: bad emotion or pixels value") from None
            if not 0 <= label < len(FER7):
                raise DatasetError(f"{path}:{line}: emotion {label} outside 0..6")
            if pixels.size != 48 * 48 or pixels.min(initial=0) < 0 or pixels.max(initial=0) > 255:
                raise DatasetError(f"{path}:{line}: expected 2304 pixel values 0..255, got {pixels.size}")
            images.append(pixels.astype(np.uint8).reshape(48, 48))
            labels.append(label)
            rows.append(row_no)
    if not images:
        raise DatasetError(f"{path}: no rows" + (f" with Usage={usage}" if usage else ""))
    return Dataset(np.stack(images), np.array(labels, dtype=np.int64), FER7, str(path),
                   index=np.array(rows, dtype=np.int64))


SUBJECT_SEP = "__"  # `ferlite capture --subject ID` names its files ID__...: the person, for a split by person


def _load_folder(root: Path, spec_size: PreprocessSpec | None) -> Dataset:
    """Images of root/<label>/; when every file is named SUBJECT__..., the dataset knows its subjects."""
    import cv2

    class_dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not class_dirs:
        raise DatasetError(f"{root}: expected one sub-folder per class (root/<label>/*.png)")
    names = tuple(canonical(d.name) for d in class_dirs)
    images, labels, subjects = [], [], []
    for code, folder in enumerate(class_dirs):
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise DatasetError(f"{folder}: empty class folder (no images)")
        for file in files:
            img = cv2.imread(str(file), cv2.IMREAD_GRAYSCALE)
            if img is None:
                raise DatasetError(f"{file}: unreadable image")
            if spec_size is not None:
                img = fit_images(img[None], spec_size)[0]
            elif images and img.shape != images[0].shape:
                raise DatasetError(f"{file}: size {img.shape[1]}x{img.shape[0]} differs from "
                                   f"{images[0].shape[1]}x{images[0].shape[0]} of the first image")
            images.append(img)
            labels.append(code)
            subjects.append(file.name.partition(SUBJECT_SEP)[0] if SUBJECT_SEP in file.name else None)
    known = np.array(subjects) if all(subjects) else None
    return Dataset(np.stack(images), np.array(labels, dtype=np.int64), names, str(root), subjects=known)
