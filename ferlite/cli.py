"""The `ferlite` command line. Stages are imported inside each command, so `--help` is instant
and device commands never load TensorFlow. FerliteError becomes a one-line message and exit code."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Annotated

import typer

from ferlite.errors import FerliteError

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="Facial-emotion models from a workstation to a Raspberry Pi.")
train_app = typer.Typer(no_args_is_help=True, help="Train Keras models (needs ferlite[train]).")
app.add_typer(train_app, name="train")


def _command_line() -> str:
    return "ferlite " + shlex.join(sys.argv[1:])


@train_app.command("cnn")
def train_cnn_cmd(
    data: Annotated[str, typer.Option(help="Training data: .npz, FER2013 .csv[:Usage] or a folder per class.")],
    val: Annotated[str, typer.Option(help="Validation data, used to choose the best epoch.")],
    out: Annotated[Path, typer.Option("-o", "--out", help="Run folder (outside git, e.g. runs/NAME).")],
    labels: Annotated[str, typer.Option(help="Label set: fer7, fer6 (disgust into angry) or ferplus.")] = "fer7",
    soft_labels: Annotated[bool, typer.Option(help="ferplus: train on the FER+ vote distribution.")] = False,
    ferplus_csv: Annotated[str | None, typer.Option(help="fer2013new.csv (default: beside --data).")] = None,
    width: Annotated[float, typer.Option(help="Width multiplier of mini-Xception.")] = 1.0,
    size: Annotated[int, typer.Option(help="Input size: 48 or 64.")] = 48,
    epochs: int = 60,
    batch_size: int = 128,
    learning_rate: float = 2e-3,
    weight_decay: float = 1e-4,
    label_smoothing: float = 0.1,
    class_weights: Annotated[bool, typer.Option(help="Weight classes by inverse frequency.")] = False,
    patience: Annotated[int, typer.Option(help="Early stopping patience in epochs (0: off).")] = 0,
    seed: int = 0,
    resume: Annotated[bool, typer.Option(help="Continue the interrupted run in --out.")] = False,
) -> None:
    """Train mini-Xception; writes model.keras and report.{json,md}, curves.png, confusion.png."""
    from ferlite.labels import LABEL_SETS

    if labels not in LABEL_SETS:
        raise FerliteError(f"unknown label set {labels!r} (choose {', '.join(LABEL_SETS)})")
    if size not in (48, 64):
        raise FerliteError("--size must be 48 or 64")
    from ferlite.training.cnn import CnnConfig, train_cnn

    cfg = CnnConfig(data=data, val=val, out=str(out), labels=labels, soft_labels=soft_labels,
                    ferplus_csv=ferplus_csv, width=width, size=size, epochs=epochs, batch_size=batch_size,
                    learning_rate=learning_rate, weight_decay=weight_decay, label_smoothing=label_smoothing,
                    class_weights=class_weights, patience=patience, seed=seed)
    model = train_cnn(cfg, resume=resume, command=_command_line())
    typer.echo(f"model: {model}\nreport: {model.parent / 'report.md'}")


def _bundle_path(bundle: Path | None) -> Path:
    """The given bundle, or the shipped default CNN bundle."""
    from ferlite.models import DEFAULT_CNN

    return bundle if bundle is not None else DEFAULT_CNN


@app.command("convert")
def convert_cmd(
    model: Annotated[Path, typer.Argument(help="Trained Keras model (.keras).")],
    calibration: Annotated[str, typer.Option(help="Real faces to calibrate int8 ranges on (any dataset format).")],
    out: Annotated[Path, typer.Option("-o", "--out", help="Bundle to write (NAME.ferlite).")],
    eval_data: Annotated[str | None, typer.Option("--eval", help="Faces to verify on (default: calibration "
                                                     "data not used for calibration).")] = None,
    calibration_size: Annotated[int, typer.Option(help="Calibration faces, stratified by class.")] = 500,
    max_drop: Annotated[float, typer.Option(help="Largest allowed int8 accuracy drop, in points.")] = 1.0,
    min_agreement: Annotated[float, typer.Option(help="Smallest allowed int8/float top-1 agreement.")] = 0.97,
    tta_flip: Annotated[bool, typer.Option(help="Average each face with its mirror on the device.")] = False,
    margin: Annotated[float, typer.Option(help="Crop margin around detected faces, per side.")] = 0.15,
    force: Annotated[bool, typer.Option(help="Write the bundle even if verification fails.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print the figures as JSON.")] = False,
) -> None:
    """Quantize to full int8, verify against float, write one .ferlite bundle."""
    from ferlite.convert.converter import convert_model
    from ferlite.convert.verify import Gate

    result = convert_model(model, calibration, out, eval_data=eval_data, calibration_size=calibration_size,
                           gate=Gate(max_drop, min_agreement), force=force, tta_flip=tta_flip, margin=margin,
                           command=_command_line())
    from ferlite.console import print_conversion

    print_conversion(result.figures, result.path, json_out)
    if result.failure and result.path is None:
        from ferlite.errors import VerificationError

        raise VerificationError(f"{result.failure}; nothing written (try a larger --calibration-size, or --force)")
    if result.failure:
        typer.echo(f"warning: {result.failure}; bundle written because of --force", err=True)


@app.command("info")
def info_cmd(
    bundle: Annotated[Path | None, typer.Argument(help="Bundle (default: the shipped CNN).")] = None,
    runtime: Annotated[bool, typer.Option("--runtime", help="Also say which TFLite runtime loads it.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print the manifest as JSON.")] = False,
) -> None:
    """Show a bundle's manifest, size and checksum status."""
    from ferlite.bundle import read_bundle
    from ferlite.console import print_info

    path = _bundle_path(bundle)
    found = read_bundle(path)
    runtime_name = None
    if runtime:
        from ferlite.runtime import Predictor

        runtime_name = Predictor(found).runtime
    print_info(found, runtime_name, json_out)


@app.command("eval")
def eval_cmd(
    data: Annotated[str, typer.Option(help="Labelled faces: .npz, FER2013 .csv[:Usage] or a folder per class.")],
    bundle: Annotated[Path | None, typer.Argument(help="Bundle, or .keras model for float "
                                                   "(default: shipped CNN).")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print metrics as JSON.")] = False,
    plot: Annotated[Path | None, typer.Option(help="Write the confusion matrix as PNG.")] = None,
    tta_flip: Annotated[bool | None, typer.Option("--tta-flip/--no-tta-flip", help="Override the bundle's "
                                                     "flip averaging.")] = None,
    threads: Annotated[int | None, typer.Option(help="Interpreter threads.")] = None,
) -> None:
    """Accuracy, macro-F1, top-2, per-class P/R/F1 and confusion matrix on labelled faces."""
    from ferlite.console import print_metrics
    from ferlite.evaluate import evaluate

    metrics, details = evaluate(_bundle_path(bundle), data, threads=threads, tta_flip=tta_flip)
    if plot is not None:
        from ferlite.plots import confusion_png

        confusion_png(metrics.confusion, tuple(details["labels"]), plot, title=f"{Path(details['model']).name}")
    print_metrics(metrics, details, json_out)


def main() -> None:
    """Entry point: run the app, turning FerliteError into a one-line message and its exit code."""
    try:
        app()
    except FerliteError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise SystemExit(exc.exit_code) from None
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        raise SystemExit(130) from None
