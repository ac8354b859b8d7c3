"""`ferlite explain`: why the model said what it said, on the device runtime (int8 bundle, no TensorFlow).

For a photo, each face gets an occlusion-sensitivity map: a grey patch slides over the model input and
the drop in a class's probability at each position says how much that part of the face carried the
class. It needs nothing but the model's own predictions, so it explains the int8 model as the device
runs it, not a float stand-in. For a labelled dataset: the confusion matrix, the most confident mistakes
of the most confused class pairs, and a reliability diagram per class. Anything with `labels` and
`predict(inputs)` explains here, the float `.keras` model too (ferlite.training.explain adds Grad-CAM).
"""

from __future__ import annotations

import html
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from ferlite.datasets import Dataset
from ferlite.device.detectors.base import Detector
from ferlite.errors import ConfigError
from ferlite.inputs import KINDS, Face
from ferlite.preprocess import FER2013_FRAMING, PreprocessSpec, to_gray

DPI = 100
PANEL_INCHES = (2.4, 2.9)  # one face panel of a face's PNG; the probability bars take BARS_PANELS of them
BARS_PANELS = 1.5

# Maps beyond occlusion (Grad-CAM of a `.keras` model): faces (N, S, S) and per face the classes to
# explain -> per face, (title, S x S map) pairs.
ExtraMaps = Callable[[np.ndarray, np.ndarray], list[list[tuple[str, np.ndarray]]]]


class Model(Protocol):
    """What explains here: the int8 Predictor, or the float KerasPredictor."""

    labels: tuple[str, ...]

    def predict(self, inputs: np.ndarray) -> np.ndarray: ...


class Step(Protocol):
    """What finds and frames faces in a photo: a FaceStep, or a Framer for a model without a manifest."""

    def find(self, image: np.ndarray) -> list[Face]: ...

    def inputs(self, image: np.ndarray, faces: list[Face]) -> np.ndarray: ...


@dataclass(frozen=True)
class Occlusion:
    """The sliding patch: `patch` pixels square, moved by `stride`, filled with the face's mean grey."""

    patch: int = 8
    stride: int = 4

    def corners(self, size: int) -> list[int]:
        return list(range(0, size - self.patch + 1, self.stride))


def occlusion_grid(model: Model, face: np.ndarray, occlusion: Occlusion = Occlusion()) -> tuple[np.ndarray, np.ndarray]:
    """The face's probabilities (K,), and per class the drop in its probability with the patch at each
    position (K, rows, cols); the face and all positions go through the model in one batch."""
    corners = occlusion.corners(face.shape[0])
    if not corners:
        raise ConfigError(f"the occluding patch ({occlusion.patch} pixels) does not fit the {face.shape[0]}-pixel "
                          "model input")
    fill = np.uint8(round(float(face.mean())))
    batch = np.repeat(face[None], 1 + len(corners) ** 2, axis=0)
    for n, (y, x) in enumerate((y, x) for y in corners for x in corners):
        batch[1 + n, y:y + occlusion.patch, x:x + occlusion.patch] = fill
    probs = model.predict(batch)
    drops = probs[0][:, None] - probs[1:].T
    return probs[0], drops.reshape(len(probs[0]), len(corners), len(corners))


def pixel_map(grid: np.ndarray, size: int, occlusion: Occlusion = Occlusion()) -> np.ndarray:
    """A grid of drops as a size x size map: each pixel the mean drop of the patches that covered it."""
    total, covered = np.zeros((size, size)), np.zeros((size, size))
    corners = occlusion.corners(size)
    for i, y in enumerate(corners):
        for j, x in enumerate(corners):
            total[y:y + occlusion.patch, x:x + occlusion.patch] += grid[i, j]
            covered[y:y + occlusion.patch, x:x + occlusion.patch] += 1
    return total / np.maximum(covered, 1)


def hottest(grid: np.ndarray) -> tuple[int, int]:
    """(row, column) of the patch position whose occlusion costs the class most."""
    row, col = np.unravel_index(int(np.argmax(grid)), grid.shape)
    return int(row), int(col)


@dataclass
class FaceExplanation:
    """One face: its model input, probabilities, the two classes explained (predicted, runner-up), their
    occlusion grids, and the maps drawn over the face (occlusion, then any extra such as Grad-CAM)."""

    face: np.ndarray
    probs: np.ndarray
    classes: list[int]
    grids: np.ndarray
    maps: list[tuple[str, np.ndarray]] = field(default_factory=list)

    def to_dict(self, labels: tuple[str, ...]) -> dict:
        top, second = self.classes
        return {"label": labels[top], "confidence": round(float(self.probs[top]), 4),
                "runner_up": labels[second], "probs": {n: round(float(p), 4) for n, p in zip(labels, self.probs)},
                "occlusion": {labels[c]: {"hottest": hottest(g), "max_drop": round(float(g.max()), 4),
                                          "grid": np.round(g, 4).tolist()} for c, g in zip(self.classes, self.grids)}}


def explain_faces(model: Model, faces: np.ndarray, occlusion: Occlusion = Occlusion(),
                  extra: ExtraMaps | None = None) -> list[FaceExplanation]:
    """Occlusion maps of each face (S x S uint8 model inputs) for its predicted class and the runner-up."""
    found = []
    for face in faces:
        probs, drops = occlusion_grid(model, face, occlusion)
        classes = [int(c) for c in np.argsort(-probs, kind="stable")[:2]]
        grids = drops[classes]
        maps = [(f"occlusion: {model.labels[c]}", pixel_map(g, face.shape[0], occlusion))
                for c, g in zip(classes, grids)]
        found.append(FaceExplanation(face, probs, classes, grids, maps))
    if extra is not None and found:
        for item, more in zip(found, extra(faces, np.array([f.classes for f in found]))):
            item.maps += more
    return found


def face_png_size(maps: int) -> tuple[int, int]:
    """(width, height) in pixels of a face's PNG with `maps` maps beside the face and its bars."""
    width, height = PANEL_INCHES
    return round(width * (1 + maps + BARS_PANELS) * DPI), round(height * DPI)


def face_png(item: FaceExplanation, labels: tuple[str, ...], title: str, path: Path) -> Path:
    """The face as the model sees it, each map over it (red: hiding this part lowers the class,
    blue: raises it) and the probability bars, in one PNG of face_png_size(len(item.maps))."""
    from ferlite.plots import pyplot

    plt = pyplot()
    width, height = PANEL_INCHES
    panels = 1 + len(item.maps)
    fig, axes = plt.subplots(1, panels + 1, figsize=(width * (panels + BARS_PANELS), height), dpi=DPI,
                             gridspec_kw={"width_ratios": [1] * panels + [BARS_PANELS]})
    axes[0].imshow(item.face, cmap="gray", vmin=0, vmax=255)
    axes[0].set_title("model input", fontsize=9)
    for ax, (name, heat) in zip(axes[1:], item.maps):
        ax.imshow(item.face, cmap="gray", vmin=0, vmax=255)
        limit = max(float(np.abs(heat).max()), 1e-6)
        ax.imshow(heat, cmap="RdBu_r", vmin=-limit, vmax=limit, alpha=0.55, interpolation="bilinear")
        ax.set_title(f"{name}\n(scale ±{limit:.2f})", fontsize=9)
    for ax in axes[:panels]:
        ax.set_xticks([])
        ax.set_yticks([])
    bars = axes[-1]
    colors = ["tab:red" if i == item.classes[0] else "tab:orange" if i == item.classes[1] else "tab:gray"
              for i in range(len(labels))]
    bars.barh(range(len(labels)), item.probs, color=colors)
    bars.set_yticks(range(len(labels)), labels, fontsize=8)
    bars.invert_yaxis()
    bars.set_xlim(0, 1)
    bars.set_xlabel("probability", fontsize=8)
    bars.tick_params(axis="x", labelsize=7)
    for i, p in enumerate(item.probs):
        bars.text(min(float(p) + 0.02, 0.8), i, f"{p:.2f}", va="center", fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.text(0.02, 0.03, "red: hiding this part lowers the class's probability; blue: raises it", fontsize=8)
    fig.subplots_adjust(left=0.02, right=0.98, top=0.76, bottom=0.16, wspace=0.35)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


@dataclass
class Framer:
    """Finds and frames faces as FaceStep does, for a model without a bundle manifest (a `.keras`
    model): framed by FER2013's recipe, as `ferlite convert` would frame them for its bundle."""

    detector: Detector
    size: int

    def find(self, image: np.ndarray) -> list[Face]:
        return self.detector.detect(image)

    def inputs(self, image: np.ndarray, faces: list[Face]) -> np.ndarray:
        spec = PreprocessSpec(size=self.size, framing=FER2013_FRAMING).to_dict()
        return KINDS["cnn"].faces(spec, to_gray(image), faces, self.detector.name)


def explain_photos(step: Step, model: Model, photos: list[Path], out: Path, occlusion: Occlusion = Occlusion(),
                   extra: ExtraMaps | None = None) -> list[dict]:
    """One PNG per face of each photo in `out`, and per photo a record of its faces (or its error)."""
    from ferlite.console import progress
    from ferlite.device.sources import BadFrameError, read_image

    out.mkdir(parents=True, exist_ok=True)
    records = []
    for path in progress(photos, "explaining"):
        try:
            image = read_image(path)
        except BadFrameError as exc:
            records.append({"image": str(path), "faces": [], "error": str(exc).split(": ", 1)[-1]})
            continue
        found = step.find(image)
        faces = []
        for n, (face, item) in enumerate(zip(found, explain_faces(model, step.inputs(image, found), occlusion,
                                                                  extra)), 1):
            top, second = item.classes
            title = (f"{path.name} face {n}: {model.labels[top]} {item.probs[top]:.2f}, "
                     f"runner-up {model.labels[second]} {item.probs[second]:.2f}")
            png = face_png(item, model.labels, title, out / f"{path.stem}.face{n}.png")
            faces.append({"face": n, "box": [int(v) for v in face.box], **item.to_dict(model.labels), "png": str(png)})
        records.append({"image": str(path), "faces": faces})
    write_index(out, "ferlite explain: faces", [(f"{Path(r['image']).name} face {f['face']}: {f['label']} "
                                                 f"{f['confidence']:.2f}", Path(f["png"]).name)
                                                for r in records for f in r["faces"]])
    return records


def print_photos(records: list[dict]) -> None:
    """Each face's label, runner-up and where hiding the face costs the label most, with its PNG."""
    from ferlite.console import console, table

    rows = table("image", "face", "label", "probability", "runner-up", "hottest patch (row, col)", "png")
    for rec in records:
        if rec.get("error") or not rec["faces"]:
            rows.add_row(rec["image"], "-", rec.get("error") or "no face found", "-", "-", "-", "-")
        for f in rec["faces"]:
            spot = f["occlusion"][f["label"]]["hottest"]
            rows.add_row(rec["image"], str(f["face"]), f["label"], f"{f['confidence']:.2f}", f["runner_up"],
                         f"{spot[0]}, {spot[1]}", f["png"])
    console().print(rows)


def print_dataset(report: dict) -> None:
    """Accuracy, the most confused pairs and each class's calibration error, then the files."""
    from ferlite.console import console, table

    con = console()
    con.print(f"[bold]{report['model']}[/] on {report['data']}: accuracy {report['accuracy']:.2%}, "
              f"ECE {report['ece']:.3f}, {report['samples']} faces")
    pairs = table("true", "predicted", "faces", "most confident", title="most confused pairs")
    for p in report["confused_pairs"]:
        pairs.add_row(p["true"], p["predicted"], str(p["count"]),
                      ", ".join(f"{e['confidence']:.2f}" for e in p["examples"][:3]))
    con.print(pairs)
    con.print("calibration error per class: " + ", ".join(f"{name} {cls['ece']:.3f}"
                                                          for name, cls in report["reliability"].items()))


@dataclass(frozen=True)
class Gallery:
    """How many of the most confused (true, predicted) pairs to show, and mistakes per pair."""

    pairs: int = 4
    per_pair: int = 6


def confused_pairs(confusion: np.ndarray, pairs: int) -> list[tuple[int, int]]:
    """The (true, predicted) pairs with the most mistakes, most first; pairs without one are left out."""
    off = np.array(confusion, dtype=np.int64)
    np.fill_diagonal(off, 0)
    order = np.argsort(-off, axis=None, kind="stable")[:pairs]
    return [(int(i), int(j)) for i, j in zip(*np.unravel_index(order, off.shape)) if off[i, j] > 0]


def worst_mistakes(y: np.ndarray, probs: np.ndarray, true: int, predicted: int, count: int) -> np.ndarray:
    """Rows of faces of class `true` predicted `predicted`, most confident first."""
    rows = np.flatnonzero((y == true) & (probs.argmax(axis=1) == predicted))
    return rows[np.argsort(-probs[rows, predicted], kind="stable")][:count]


def reliability(y: np.ndarray, probs: np.ndarray, bins: int = 10) -> list[dict]:
    """Per class, one-vs-rest: in equal-width bins of the class's probability, how often the face is
    that class, and the class's calibration error (the bins' gaps weighted by their share of faces)."""
    classes = []
    for k in range(probs.shape[1]):
        p, hit = probs[:, k], y == k
        which = np.minimum((p * bins).astype(int), bins - 1)
        rows, ece = [], 0.0
        for b in range(bins):
            inside = which == b
            if inside.any():
                mean, freq = float(p[inside].mean()), float(hit[inside].mean())
                rows.append({"bin": [b / bins, (b + 1) / bins], "mean_probability": round(mean, 4),
                             "frequency": round(freq, 4), "faces": int(inside.sum())})
                ece += inside.mean() * abs(freq - mean)
        classes.append({"ece": round(float(ece), 4), "bins": rows})
    return classes


def gallery_png(images: np.ndarray, y: np.ndarray, probs: np.ndarray, labels: tuple[str, ...],
                pairs: list[tuple[int, int]], gallery: Gallery, path: Path) -> Path:
    """One row per confused pair: its most confident mistakes, each titled with its probability."""
    from ferlite.plots import pyplot

    plt = pyplot()
    rows = max(len(pairs), 1)
    fig, axes = plt.subplots(rows, gallery.per_pair, figsize=(1.3 * gallery.per_pair + 0.4, 1.55 * rows),
                             squeeze=False, dpi=DPI)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_frame_on(False)
    for r, (true, predicted) in enumerate(pairs):
        picked = worst_mistakes(y, probs, true, predicted, len(y))
        axes[r, 0].set_ylabel(f"true {labels[true]}\n→ {labels[predicted]}\n({len(picked)} faces)", fontsize=8)
        picked = picked[:gallery.per_pair]
        for c, i in enumerate(picked):
            axes[r, c].imshow(images[i], cmap="gray", vmin=0, vmax=255)
            axes[r, c].set_title(f"{labels[predicted]} {probs[i, predicted]:.2f}", fontsize=7)
    fig.suptitle("most confident mistakes of the most confused pairs", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def reliability_png(classes: list[dict], labels: tuple[str, ...], path: Path) -> Path:
    """Per class: how often a face is the class against the probability the model gave it (diagonal:
    perfectly calibrated), bars darker the more faces their bin holds (log scale: the lowest bin holds most)."""
    from ferlite.plots import pyplot

    plt = pyplot()
    cols = 4
    rows = -(-len(labels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.5 * rows), squeeze=False, dpi=DPI)
    for ax in axes.flat[len(labels):]:
        ax.set_visible(False)
    for ax, name, cls in zip(axes.flat, labels, classes):
        most = np.log1p(max((b["faces"] for b in cls["bins"]), default=1))
        for b in cls["bins"]:
            ax.bar(b["bin"][0], b["frequency"], width=b["bin"][1] - b["bin"][0], align="edge",
                   color="tab:blue", alpha=0.15 + 0.85 * np.log1p(b["faces"]) / most, edgecolor="white")
        ax.plot([0, 1], [0, 1], color="gray", linestyle="--", linewidth=1)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_title(f"{name} (ECE {cls['ece']:.3f})", fontsize=9)
        ax.tick_params(labelsize=7)
    for ax in axes[-1]:
        ax.set_xlabel("model probability", fontsize=8)
    for ax in axes[:, 0]:
        ax.set_ylabel("share that is the class", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def explain_dataset(model: Model, dataset: Dataset, inputs: np.ndarray, out: Path, name: str,
                    gallery: Gallery = Gallery(), more: tuple[tuple[str, str], ...] = ()) -> dict:
    """The confusion matrix, error gallery and per-class reliability of `model` on labelled faces, as
    PNGs and an index in `out` (which also lists `more`, figures already written there: caption, file
    name); returns the numbers behind them."""
    from ferlite.evaluate import predict_dataset
    from ferlite.metrics import compute_metrics
    from ferlite.plots import confusion_png

    out.mkdir(parents=True, exist_ok=True)
    probs = predict_dataset(model, inputs, description="explaining")
    labels = tuple(model.labels)
    metrics = compute_metrics(dataset.labels, probs, labels)
    pairs = confused_pairs(np.array(metrics.confusion), gallery.pairs)
    classes = reliability(dataset.labels, probs)
    files = [confusion_png(metrics.confusion, labels, out / "confusion.png", title=name),
             gallery_png(inputs, dataset.labels, probs, labels, pairs, gallery, out / "errors.png"),
             reliability_png(classes, labels, out / "reliability.png")]
    summary = (f"<p>{html.escape(name)} on {html.escape(dataset.source)}: accuracy {metrics.accuracy:.2%}, "
               f"ECE {metrics.ece:.3f}, {metrics.samples} faces</p>")
    write_index(out, "ferlite explain: errors and calibration",
                [("confusion matrix (row-normalized)", "confusion.png"), ("error gallery", "errors.png"),
                 ("reliability per class", "reliability.png"), *more], summary)
    rows = dataset.index if dataset.index is not None else np.arange(len(dataset))
    mistakes = [{"true": labels[t], "predicted": labels[p], "count": int(metrics.confusion[t][p]),
                 "examples": [{"row": int(rows[i]), "confidence": round(float(probs[i, p]), 4)}
                              for i in worst_mistakes(dataset.labels, probs, t, p, gallery.per_pair)]}
                for t, p in pairs]
    return {"model": name, "data": dataset.source, "samples": metrics.samples,
            "accuracy": round(metrics.accuracy, 4), "ece": round(metrics.ece, 4), "labels": list(labels),
            "confusion": metrics.confusion, "confused_pairs": mistakes,
            "reliability": dict(zip(labels, classes)),
            "files": [str(f) for f in files] + [str(out / src) for _, src in more] + [str(out / "index.html")]}


def write_index(out: Path, title: str, figures: list[tuple[str, str]], summary: str = "") -> Path:
    """index.html in `out`, each figure (caption, file name in `out`) under its caption."""
    body = "\n".join(f'<figure><img src="{html.escape(src)}" alt="{html.escape(caption)}">'
                     f"<figcaption>{html.escape(caption)}</figcaption></figure>" for caption, src in figures)
    page = (f"<!doctype html>\n<meta charset=\"utf-8\">\n<title>{html.escape(title)}</title>\n"
            "<style>body{font-family:sans-serif;margin:2em}img{max-width:100%}figure{margin:0 0 2em}</style>\n"
            f"<h1>{html.escape(title)}</h1>\n{summary}\n{body}\n")
    path = out / "index.html"
    path.write_text(page)
    return path
