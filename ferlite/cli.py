"""The `ferlite` command line. Stages are imported inside each command, so `--help` is instant
and device commands never load TensorFlow. FerliteError becomes a one-line message and exit code."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Annotated

import typer

from ferlite.config import HELP, RunConfig
from ferlite.device.detectors import HELP as DETECTOR_HELP
from ferlite.device.service import CONFIG_PATH, STATE_DB, UNIT_DIR
from ferlite.errors import ConfigError, FerliteError

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False, rich_markup_mode=None,
                  help="Facial-emotion models from a workstation to a Raspberry Pi.")
train_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None, help="Train Keras models (needs ferlite[train]).")
app.add_typer(train_app, name="train")
log_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None, help="Read a results log: summary, export, plot.")
app.add_typer(log_app, name="log")


_RUN = RunConfig()
CONFIG_HELP = "TOML file of device options (`ferlite config init`); flags given here override it."


def _version(value: bool) -> None:
    if value:
        from ferlite import __version__

        typer.echo(f"ferlite {__version__}")
        raise typer.Exit()


@app.callback()
def _main(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                                help="Print ferlite's version and exit.")] = False) -> None:
    """Facial-emotion models from a workstation to a Raspberry Pi."""


def _command_line() -> str:
    return "ferlite " + shlex.join(sys.argv[1:])


@train_app.command("cnn")
def train_cnn_cmd(
    out: Annotated[Path, typer.Option("-o", "--out", help="Run folder (outside git, e.g. runs/NAME).")],
    data: Annotated[str | None, typer.Option(help="Training data: .npz, FER2013 .csv[:Usage] or a folder per "
                                             "class.")] = None,
    val: Annotated[str | None, typer.Option(help="Validation data, used to choose the best epoch (default: --held "
                                            "of --data, by subject when its files are named SUBJECT__...).")] = None,
    labels: Annotated[str, typer.Option(help="Label set: fer7, fer6 (disgust into angry) or ferplus.")] = "fer7",
    soft_labels: Annotated[bool, typer.Option(help="ferplus: train on the FER+ vote distribution.")] = False,
    ferplus_csv: Annotated[str | None, typer.Option(help="fer2013new.csv (default: beside --data).")] = None,
    ferplus_share: Annotated[float, typer.Option(help="fer7/fer6: share of the FER+ annotators' votes mixed into "
                                                      "each FER2013 face's label (0-1; 0: off).")] = 0.0,
    width: Annotated[float, typer.Option(help="Width multiplier of mini-Xception.")] = 1.0,
    size: Annotated[int, typer.Option(help="Input size: 48 or 64.")] = 48,
    epochs: Annotated[int, typer.Option(help="Passes over the training data.")] = 60,
    batch_size: Annotated[int, typer.Option(help="Faces per training step.")] = 128,
    learning_rate: Annotated[float, typer.Option(help="Peak learning rate of the cosine schedule (AdamW).")] = 2e-3,
    weight_decay: Annotated[float, typer.Option(help="AdamW weight decay.")] = 1e-4,
    label_smoothing: Annotated[float, typer.Option(help="Share of each target spread over the other "
                                                        "classes.")] = 0.1,
    augment: Annotated[str, typer.Option(help="Batch augmentation: light (flip, shift, brightness, contrast) "
                                         "or full (also rotation and zoom).")] = "light",
    erase: Annotated[float, typer.Option(help="Share of training faces with one random patch (2-33 % of the "
                                           "face) replaced by noise: random erasing (0: off).")] = 0.0,
    mixup: Annotated[float, typer.Option(help="Mixup's alpha: each face and its target blended with another of "
                                           "its batch, by a Beta(alpha, alpha) weight (0: off; 0.2 is usual).")] = 0.0,
    optimizer: Annotated[str, typer.Option(help="adamw, or sgd: SGD with Nesterov momentum 0.9, which wants a "
                                               "larger learning rate (e.g. 0.05).")] = "adamw",
    class_weights: Annotated[bool, typer.Option(help="Weight classes by inverse frequency.")] = False,
    patience: Annotated[int, typer.Option(help="Early stopping patience in epochs (0: off).")] = 0,
    seed: Annotated[int, typer.Option(help="Random seed: the same seed and data give the same model.")] = 0,
    init: Annotated[str | None, typer.Option(help="Fine-tune this instead of starting from scratch: a trained "
                                             ".keras model, a CNN bundle, or `default` for the shipped one "
                                             "(--width is then ignored).")] = None,
    freeze: Annotated[int, typer.Option(help="Leading stages of mini-Xception (stem and up to four blocks) kept "
                                             "as they are while fine-tuning.")] = 0,
    held: Annotated[float, typer.Option(help="Without --val: the share of --data held out to choose and judge the "
                                             "model.")] = 0.25,
    forget: Annotated[str | None, typer.Option(help="With --init: data the model should still know (e.g. FER2013 "
                                               "PublicTest); its accuracy before and after is reported.")] = None,
    rehearse: Annotated[str | None, typer.Option(help="Data the model already knew (e.g. FER2013 training faces), "
                                                 "mixed into training so it forgets less.")] = None,
    rehearse_share: Annotated[float, typer.Option(help="Faces of --rehearse per face of --data.")] = 1.0,
    teacher: Annotated[list[str] | None, typer.Option(
        metavar="MODEL", help="Trained .keras model(s) or .ferlite bundle(s) to distil from; repeat for an "
                              "ensemble.")] = None,
    distill: Annotated[float, typer.Option(help="Share of the teachers' probabilities in the targets (0-1).")] = 0.5,
    resume: Annotated[bool, typer.Option(help="Continue the interrupted run in --out with the options it was "
                                              "started with (other options are ignored).")] = False,
) -> None:
    """Train mini-Xception; writes model.keras and report.{json,md}, curves.png, confusion.png."""
    from ferlite.labels import LABEL_SETS

    if not resume and data is None:
        raise ConfigError("--data is needed to start a run (only --resume reads it from the run)")
    if not 0 < held < 1 or not 0 <= freeze <= 5:
        raise ConfigError("--held must be within (0, 1) and --freeze within 0..5")
    if labels not in LABEL_SETS:
        raise FerliteError(f"unknown label set {labels!r} (choose {', '.join(LABEL_SETS)})")
    if size not in (48, 64):
        raise FerliteError("--size must be 48 or 64")
    if not 0 <= distill <= 1 or not 0 <= ferplus_share <= 1:
        raise FerliteError("--distill and --ferplus-share must be between 0 and 1")
    if not 0 <= erase <= 1 or mixup < 0:
        raise ConfigError("--erase must be between 0 and 1 and --mixup at least 0")
    from ferlite.training.augment import AUGMENTATIONS
    from ferlite.training.cnn import OPTIMIZERS, CnnConfig, train_cnn

    if augment not in AUGMENTATIONS:
        raise FerliteError(f"unknown augmentation {augment!r} (choose {', '.join(AUGMENTATIONS)})")
    if optimizer not in OPTIMIZERS:
        raise ConfigError(f"unknown optimizer {optimizer!r} (choose {', '.join(OPTIMIZERS)})")

    cfg = CnnConfig(data=data or "", val=val or "", out=str(out), labels=labels, soft_labels=soft_labels,
                    ferplus_csv=ferplus_csv, ferplus_share=ferplus_share, width=width, size=size, epochs=epochs,
                    batch_size=batch_size, learning_rate=learning_rate, weight_decay=weight_decay,
                    label_smoothing=label_smoothing, augment=augment, erase=erase, mixup=mixup, optimizer=optimizer,
                    class_weights=class_weights, patience=patience, seed=seed, init=init,
                    teachers=teacher or [], distill=distill, held=held, freeze=freeze, forget=forget,
                    rehearse=rehearse, rehearse_share=rehearse_share)
    model = train_cnn(cfg, resume=resume, command=_command_line())
    typer.echo(f"model: {model}\nreport: {model.parent / 'report.md'}")
    import json

    fine_tune = json.loads((model.parent / "report.json").read_text()).get("fine_tune")
    for name, key in (("held faces", "held"), (fine_tune and fine_tune["forget"], "forget")):
        if fine_tune and key in fine_tune["before"]:
            before, after = fine_tune["before"][key], fine_tune["after"][key]
            typer.echo(f"{name}: {before:.2%} before fine-tuning, {after:.2%} after")


LandmarksOpt = Annotated[str | None, typer.Option("--landmarks", help="dlib's shape_predictor_68_face_landmarks.dat "
                                                  "(default: $FERLITE_LANDMARKS, else from face-recognition-models).")]


@train_app.command("svm")
def train_svm_cmd(
    data: Annotated[list[str], typer.Option(metavar="DATA", help="Labelled face crops (.npz, folder per class); "
                                                                 "repeat to combine datasets.")],
    out: Annotated[Path, typer.Option("-o", "--out", help="Run folder (outside git, e.g. runs/NAME).")],
    group_by: Annotated[str, typer.Option(help="Cross-validate by 'subject' (subject-independent; needs subject "
                                               "ids) or by 'image'.")] = "subject",
    folds: Annotated[int, typer.Option(help="Folds; with no more subjects than this, leave-one-subject-out.")] = 10,
    labels: Annotated[str, typer.Option(help="Label set: fer7, fer6 (disgust into angry) or ferplus.")] = "fer7",
    features: Annotated[str, typer.Option(help="Feature recipe: hog (HOG of the landmark-aligned face) or geometry "
                                               "(landmark positions).")] = "hog",
    rff: Annotated[int, typer.Option(help="Random Fourier features approximating an RBF kernel (0: linear "
                                          "SVM).")] = 0,
    gamma: Annotated[float, typer.Option(help="RBF gamma on standardized features (0: 1/features).")] = 0.0,
    l2: Annotated[float | None, typer.Option(help="L2 weight decay of the SVM (larger: softer margin; default: "
                                                  "hog 400, geometry 4, divided by the training rows).")] = None,
    epochs: Annotated[int, typer.Option(help="Full-batch training steps per fit.")] = 300,
    seed: Annotated[int, typer.Option(help="Random seed of the folds and the SVM's initialisation.")] = 0,
    landmarks: LandmarksOpt = None,
) -> None:
    """Landmark features -> one-vs-rest SVM; writes model.keras and report.{json,md}, confusion.png."""
    if folds < 2:
        raise FerliteError("--folds must be at least 2")
    import json

    from ferlite.training.svm import SvmConfig, train_svm

    cfg = SvmConfig(data=data, out=str(out), labels=labels, group_by=group_by, folds=folds, features=features,
                    rff=rff, gamma=gamma, l2=l2, epochs=epochs, seed=seed, landmarks=landmarks)
    model = train_svm(cfg, command=_command_line())
    report = json.loads((model.parent / "report.json").read_text())
    typer.echo(f"{report['evaluation']}: accuracy {report['metrics']['accuracy']:.2%}, "
               f"macro-F1 {report['metrics']['macro_f1']:.3f}")
    for name, row in report["per_source"].items():
        typer.echo(f"  {name}: {row['accuracy']:.2%} on {row['samples']} faces of {row['subjects']} subjects")
    typer.echo(f"model: {model}\nreport: {model.parent / 'report.md'}")


def _bundle_path(bundle: Path | None) -> Path:
    """The given bundle (a file or a shipped bundle's short name), or the shipped default CNN bundle."""
    from ferlite.bundles import bundle_path

    return bundle_path(bundle)


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
    margin: Annotated[float, typer.Option(help="Crop margin around detected faces, per side "
                                          "(fraction of a Haar-style box).")] = 0.0,
    per_tensor: Annotated[bool, typer.Option(help="One int8 scale per weight tensor instead of per output "
                                             "channel: a smaller file (a wider model fits), often less "
                                             "agreement with float.")] = False,
    force: Annotated[bool, typer.Option(help="Write the bundle even if verification fails.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print the figures as JSON.")] = False,
    landmarks: LandmarksOpt = None,
) -> None:
    """Quantize to full int8, verify against float, write one .ferlite bundle (kind from the model's input)."""
    from ferlite.convert.converter import convert_model
    from ferlite.convert.verify import Gate

    result = convert_model(model, calibration, out, eval_data=eval_data, calibration_size=calibration_size,
                           gate=Gate(max_drop, min_agreement), force=force, tta_flip=tta_flip, margin=margin,
                           command=_command_line(), landmarks=landmarks, per_tensor=per_tensor)
    from ferlite.console import print_conversion

    print_conversion(result.figures, result.path, json_out)
    if result.failure and result.path is None:
        from ferlite.errors import VerificationError

        raise VerificationError(f"{result.failure}; nothing written (try a larger --calibration-size, or --force)")
    if result.failure:
        typer.echo(f"warning: {result.failure}; bundle written because of --force", err=True)


@app.command("calibrate")
def calibrate_cmd(
    data: Annotated[str, typer.Option(help="Held labelled faces to fit the temperature on (not training faces).")],
    out: Annotated[Path, typer.Option("-o", "--out", help="Bundle to write (may be the input bundle).")],
    bundle: Annotated[Path | None, typer.Argument(help="CNN bundle (default: the shipped CNN).")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the figures as JSON.")] = False,
) -> None:
    """Fit a bundle's probability temperature on held faces (and add FER2013's framing if it lacks it)."""
    from ferlite.console import emit_json, wrote
    from ferlite.convert.calibrate import calibrate_bundle

    _, figures = calibrate_bundle(_bundle_path(bundle), data, out)
    if json_out:
        emit_json(figures)
        return
    typer.echo(f"temperature {figures['temperature']} on {figures['faces']} faces: ECE {figures['ece_before']:.3f} "
               f"-> {figures['ece_after']:.3f}")
    wrote(out)


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
    ctx: typer.Context,
    data: Annotated[str, typer.Option(help="Labelled faces: .npz, FER2013 .csv[:Usage] or a folder per class.")],
    bundle: Annotated[Path | None, typer.Argument(help="Bundle, or .keras model for float "
                                                   "(default: shipped CNN).")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print metrics as JSON.")] = False,
    plot: Annotated[Path | None, typer.Option(help="Write the confusion matrix as PNG.")] = None,
    tta_flip: Annotated[bool | None, typer.Option("--tta-flip/--no-tta-flip", help="Override the bundle's "
                                                     "flip averaging.")] = None,
    threads: Annotated[int | None, typer.Option(help=HELP["threads"])] = _RUN.threads,
    ferplus: Annotated[bool, typer.Option("--ferplus", help="Score against the FER+ majority vote instead of the "
                                          "dataset's labels (FER2013 data with row numbers).")] = False,
    ferplus_csv: Annotated[str | None, typer.Option(help="fer2013new.csv (default: beside --data).")] = None,
    detector: Annotated[str | None, typer.Option(help="Treat the images as photos: find the largest face with "
                                                 "this detector and frame it as the device does; images "
                                                 "without a face are counted.")] = None,
    align: Annotated[bool | None, typer.Option("--align/--no-align", help="With --detector: override the "
                                               "bundle's alignment on landmarks.")] = None,
    temperature: Annotated[bool, typer.Option("--temperature/--no-temperature", help="Calibrate probabilities "
                                              "with the bundle's temperature (off: as the model gives them; "
                                              "accuracy is the same, ECE is not).")] = True,
    config: Annotated[Path | None, typer.Option(help="With --detector: " + CONFIG_HELP)] = None,
    detect_width: Annotated[int, typer.Option(help="With --detector: " + HELP["detect_width"])] = _RUN.detect_width,
    min_face: Annotated[int, typer.Option(help="With --detector: " + HELP["min_face"])] = _RUN.min_face,
    ensemble: Annotated[list[Path] | None, typer.Option("--ensemble", help="Average BUNDLE's probabilities with "
                                                        "this bundle's (repeatable): what a student distilled "
                                                        "from them is measured against.")] = None,
) -> None:
    """Accuracy, macro-F1, top-2, per-class P/R/F1 and confusion matrix on labelled faces."""
    from ferlite.console import print_metrics
    from ferlite.evaluate import Truth, evaluate_bundle

    path = _bundle_path(bundle)
    truth = Truth(ferplus, ferplus_csv)
    members = [_bundle_path(b) for b in ensemble or ()]
    if path.suffix == ".keras":
        from ferlite.training.keras_model import evaluate_keras

        if members:
            raise ConfigError("--ensemble averages bundles; convert the .keras model first")
        if detector is not None:
            raise ConfigError("--detector scores a bundle on the device path; convert the .keras model first")
        metrics, details = evaluate_keras(path, data, bool(tta_flip), truth)
    elif detector is not None:
        from ferlite.device.evaluate import evaluate_photos

        cfg = _device_config(ctx, config)
        metrics, details = evaluate_photos(path, data, detector, cfg.detect_width, cfg.min_face, threads=threads,
                                           tta_flip=tta_flip, truth=truth, align=align, calibrated=temperature,
                                           ensemble=members)
    else:
        metrics, details = evaluate_bundle(path, data, threads=threads, tta_flip=tta_flip, truth=truth,
                                           calibrated=temperature, ensemble=members)
    if plot is not None:
        from ferlite.console import wrote
        from ferlite.plots import confusion_png

        title = " + ".join(p.name for p in (path, *members))
        confusion_png(metrics.confusion, tuple(details["labels"]), plot, title=title)
        wrote(plot)
    print_metrics(metrics, details, json_out)




def _given(ctx: typer.Context) -> dict:
    """The device options typed on this command line, by RunConfig field name."""
    from dataclasses import fields

    names = {f.name for f in fields(RunConfig)}
    given = {name: value for name, value in ctx.params.items()
             if name in names and ctx.get_parameter_source(name).name == "COMMANDLINE"}
    if given.get("bundle") is not None:
        given["bundle"] = str(given["bundle"])
    return given


def _device_config(ctx: typer.Context, config: Path | None) -> RunConfig:
    """The device options of a command that brings its own images (predict, eval, bench): defaults, then
    the TOML file's, then the flags; the file's camera and source are the service's, not this command's."""
    from ferlite.config import read_toml

    values = {k: v for k, v in (read_toml(config) if config else {}).items() if k not in ("camera", "source")}
    return RunConfig(**{**values, **_given(ctx)}).validate(needs_source=False)


def _resolution(text: str | None) -> tuple[int | None, int | None]:
    if text is None:
        return None, None
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ConfigError(f"--resolution {text!r}: expected WIDTHxHEIGHT, e.g. 640x480") from None
    return width, height


@app.command("run")
def run_cmd(
    ctx: typer.Context,
    config: Annotated[Path | None, typer.Option(help=CONFIG_HELP)] = None,
    camera: Annotated[bool, typer.Option("--camera", help=HELP["camera"])] = _RUN.camera,
    source: Annotated[str | None, typer.Option(help=HELP["source"])] = _RUN.source,
    bundle: Annotated[Path | None, typer.Option(help=HELP["bundle"])] = None,
    detector: Annotated[str | None, typer.Option(help=DETECTOR_HELP)] = _RUN.detector,
    detect_every: Annotated[int, typer.Option(help=HELP["detect_every"])] = _RUN.detect_every,
    detect_width: Annotated[int, typer.Option(help=HELP["detect_width"])] = _RUN.detect_width,
    min_face: Annotated[int, typer.Option(help=HELP["min_face"])] = _RUN.min_face,
    resolution: Annotated[str | None, typer.Option(help="Camera resolution WIDTHxHEIGHT, e.g. 640x480.")] = None,
    max_fps: Annotated[float, typer.Option(help=HELP["max_fps"])] = _RUN.max_fps,
    threads: Annotated[int | None, typer.Option(help=HELP["threads"])] = _RUN.threads,
    threshold: Annotated[float, typer.Option(help=HELP["threshold"])] = _RUN.threshold,
    smoothing: Annotated[float, typer.Option(help=HELP["smoothing"])] = _RUN.smoothing,
    max_missed: Annotated[int, typer.Option(help=HELP["max_missed"])] = _RUN.max_missed,
    iou: Annotated[float, typer.Option(help=HELP["iou"])] = _RUN.iou,
    log: Annotated[str | None, typer.Option("--log", help=HELP["log"])] = _RUN.log,
    log_format: Annotated[str, typer.Option(help=HELP["log_format"])] = _RUN.log_format,
    privacy: Annotated[bool, typer.Option(help=HELP["privacy"])] = _RUN.privacy,
    retention_days: Annotated[float, typer.Option(help=HELP["retention_days"])] = _RUN.retention_days,
    retention_mb: Annotated[float, typer.Option(help=HELP["retention_mb"])] = _RUN.retention_mb,
    save_faces: Annotated[str | None, typer.Option(help=HELP["save_faces"])] = _RUN.save_faces,
    preview: Annotated[bool, typer.Option(help=HELP["preview"])] = _RUN.preview,
    bars: Annotated[bool, typer.Option("--bars", help=HELP["bars"])] = _RUN.bars,
    status: Annotated[bool, typer.Option(help=HELP["status"])] = _RUN.status,
    max_frames: Annotated[int, typer.Option(help=HELP["max_frames"])] = _RUN.max_frames,
    mqtt: Annotated[str | None, typer.Option(help=HELP["mqtt"])] = _RUN.mqtt,
    device_id: Annotated[str | None, typer.Option(help=HELP["device_id"])] = _RUN.device_id,
) -> None:
    """Detect, classify and track faces from a camera, video or images, logging results locally."""
    import logging

    from ferlite.config import build_config
    from ferlite.device.run import run

    given = _given(ctx)
    if resolution is not None:
        given["width"], given["height"] = _resolution(resolution)
    cfg = build_config(config, given)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    stats, results = run(cfg)
    typer.echo(f"run {results.run_id}: {stats.frames} frames, {stats.skipped} skipped, {stats.read_failures} failed "
               f"reads, {results.stored} faces logged to {cfg.log_path()}", err=True)
    from ferlite.errors import LogError, SourceError

    if results.dropped:
        raise LogError(f"{cfg.log_path()}: {results.dropped} of {stats.detections} faces were lost (the disk was full "
                       "or the database locked past the retries; see the warnings above)")
    if stats.broken:
        raise SourceError(f"the source ended early: {stats.broken}")
    if stats.frames == 0 and (stats.skipped or stats.read_failures):
        raise SourceError(f"{cfg.source or 'the camera'}: no frame could be used")


@app.command("predict")
def predict_cmd(
    ctx: typer.Context,
    images: Annotated[list[Path], typer.Argument(metavar="IMAGE_OR_FOLDER", help="Photos, or folders of them, "
                                                 "to classify every detected face in.")],
    config: Annotated[Path | None, typer.Option(help=CONFIG_HELP)] = None,
    bundle: Annotated[Path | None, typer.Option(help=HELP["bundle"])] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print results as JSON.")] = False,
    annotate: Annotated[Path | None, typer.Option(help="Write each photo with boxes and labels drawn "
                                                       "into this folder.")] = None,
    bars: Annotated[bool, typer.Option("--bars", help=HELP["bars"])] = _RUN.bars,
    detector: Annotated[str | None, typer.Option(help=DETECTOR_HELP)] = _RUN.detector,
    min_face: Annotated[int, typer.Option(help=HELP["min_face"])] = _RUN.min_face,
    detect_width: Annotated[int, typer.Option(help=HELP["detect_width"])] = _RUN.detect_width,
    threshold: Annotated[float, typer.Option(help=HELP["threshold"])] = _RUN.threshold,
    threads: Annotated[int | None, typer.Option(help=HELP["threads"])] = _RUN.threads,
) -> None:
    """Classify the faces in photos: a table, or JSON with one result per detected face."""
    import cv2

    from ferlite.console import wrote
    from ferlite.device.faces import face_step
    from ferlite.device.logview import predict_photo, print_predictions
    from ferlite.device.pipeline import annotate as draw
    from ferlite.device.sources import BadFrameError, image_files, read_image
    from ferlite.errors import SourceError

    missing = [str(p) for p in images if not p.exists()]
    if missing:
        raise SourceError(f"no such image or folder: {', '.join(missing)}")
    images = [f for p in images for f in (image_files(p) if p.is_dir() else [p])]
    cfg = _device_config(ctx, config)
    step = face_step(cfg)
    records = []
    for path in images:
        try:
            image = read_image(path)
        except BadFrameError as exc:
            records.append({"image": str(path), "faces": [], "error": str(exc).split(": ", 1)[-1]})
            continue
        results = predict_photo(image, step, cfg.threshold)
        records.append({"image": str(path), "faces": [{"face": r.track, "box": list(r.box), "label": r.label,
                                                       "confidence": round(r.confidence, 4),
                                                       "uncertain": r.uncertain, "probs": r.probs}
                                                      for r in results]})
        if annotate is not None:
            annotate.mkdir(parents=True, exist_ok=True)
            written = annotate / f"{path.stem}.annotated.png"
            cv2.imwrite(str(written), draw(image, results, cfg.bars))
            wrote(written)
    print_predictions(records, json_out)
    if any(rec.get("error") for rec in records):
        raise SystemExit(1)


@app.command("bench")
def bench_cmd(
    ctx: typer.Context,
    config: Annotated[Path | None, typer.Option(help=CONFIG_HELP)] = None,
    bundle: Annotated[Path | None, typer.Option(help=HELP["bundle"])] = None,
    source: Annotated[str | None, typer.Option(help="Video, image or folder of images, looped as needed "
                                                    "(default: the test clip tests/fixtures/clip.avi).")] = None,
    detector: Annotated[str | None, typer.Option(help=DETECTOR_HELP)] = _RUN.detector,
    threads: Annotated[int | None, typer.Option(help=HELP["threads"])] = _RUN.threads,
    detect_every: Annotated[int, typer.Option(help=HELP["detect_every"])] = _RUN.detect_every,
    detect_width: Annotated[int, typer.Option(help=HELP["detect_width"])] = _RUN.detect_width,
    min_face: Annotated[int, typer.Option(help=HELP["min_face"])] = _RUN.min_face,
    frames: Annotated[int, typer.Option(help="Frames (model-only: calls) measured after the warm-up.")] = 300,
    warmup: Annotated[int, typer.Option(help="Frames (model-only: calls) run before measuring.")] = 20,
    model_only: Annotated[bool, typer.Option("--model-only", help="Time the bundle alone on real faces from "
                                                                  "the source, one face per call.")] = False,
    keras: Annotated[Path | None, typer.Option(help="Model-only: also time this .keras model as float TFLite "
                                                    "(imports TensorFlow).")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the figures as JSON.")] = False,
) -> None:
    """Per-stage latency (median, p95), frames/s, faces/s, peak RSS and time to first prediction of `run`."""
    from ferlite.device.bench import bench_model, bench_pipeline, default_source, print_bench

    if keras is not None and not model_only:
        raise ConfigError("--keras compares float with int8 inference: add --model-only")
    from dataclasses import replace

    cfg = replace(_device_config(ctx, config), source=source or str(default_source()))
    if model_only:
        float_model = None
        if keras is not None:  # converted here, the top of the house: the device never imports TensorFlow
            from ferlite.convert.quantize import float_tflite
            from ferlite.training.keras_model import load_keras

            float_model = (str(keras), float_tflite(load_keras(keras)))
        report = bench_model(cfg, frames, warmup, float_model)
    else:
        report = bench_pipeline(cfg, frames, warmup)
    print_bench(report, json_out)


LogArg = Annotated[str, typer.Argument(help="Results log (SQLite or JSONL), or a database `ferlite collect` "
                                           "filled: a file or postgresql://...")]
DeviceOpt = Annotated[str | None, typer.Option("--device", help="A collected database: only this device's runs.")]


def _log_reader(log: str, device: str | None):
    """A device's results log, or a collected database (SQLite or PostgreSQL), with `device` one device's runs."""
    from ferlite.device.fleet.store import PostgresReader, is_postgres
    from ferlite.device.log import open_reader

    return PostgresReader(log, device) if is_postgres(log) else open_reader(log, device)


@log_app.command("summary")
def log_summary_cmd(
    log: LogArg = "results.db",
    json_out: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
    device: DeviceOpt = None,
) -> None:
    """Each run: source, detector, frames, faces, tracks and faces per label."""
    from ferlite.device.logview import print_summary, summarize

    print_summary(summarize(_log_reader(log, device)), json_out)


@log_app.command("export")
def log_export_cmd(
    log: LogArg = "results.db",
    csv_out: Annotated[str | None, typer.Option("--csv", help="Write CSV here ('-': stdout).")] = None,
    jsonl_out: Annotated[str | None, typer.Option("--jsonl", help="Write JSON lines here ('-': stdout).")] = None,
    counts: Annotated[bool, typer.Option(help="Export the per-minute counts (privacy runs) instead of "
                                              "detections.")] = False,
    device: DeviceOpt = None,
) -> None:
    """Export detections (or per-minute counts) as CSV or JSON lines."""
    from ferlite.device.logview import export

    if (csv_out is None) == (jsonl_out is None):
        raise ConfigError("give exactly one of --csv FILE or --jsonl FILE")
    rows = export(_log_reader(log, device), csv_out or jsonl_out, "csv" if csv_out else "jsonl", counts=counts)
    if (csv_out or jsonl_out) != "-":
        typer.echo(f"{rows} rows written to {csv_out or jsonl_out}", err=True)


@log_app.command("plot")
def log_plot_cmd(
    out: Annotated[Path, typer.Option("--out", help="PNG to write.")],
    log: LogArg = "results.db",
    run: Annotated[int | None, typer.Option(help="Only this run (default: all).")] = None,
    device: DeviceOpt = None,
) -> None:
    """Emotion timeline (faces per label per minute) and distribution, as one PNG."""
    from ferlite.device.logview import timeline
    from ferlite.plots import emotions_png

    minutes, series = timeline(_log_reader(log, device), run)
    if not minutes:
        raise ConfigError(f"{log}: no results to plot" + (f" for run {run}" if run is not None else ""))
    emotions_png(minutes, series, out, title=f"{Path(log).name}" + (f" run {run}" if run is not None else ""))
    typer.echo(f"plot: {out}", err=True)


config_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None, help="The TOML file of `ferlite run` options.")
app.add_typer(config_app, name="config")
service_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None, help="Run ferlite as a systemd service.")
app.add_typer(service_app, name="service")


def _default_config_text() -> str:
    """The commented default config, its comments the options' own help (RunConfig, one source of truth)."""
    from ferlite.config import default_toml

    return default_toml({"detector": DETECTOR_HELP})


@config_app.command("init")
def config_init_cmd(
    path: Annotated[Path, typer.Argument(help="Where to write it ('-': print it).")] = CONFIG_PATH,
    force: Annotated[bool, typer.Option(help="Overwrite an existing file.")] = False,
) -> None:
    """Write a commented default config listing every run option."""
    text = _default_config_text()
    if str(path) == "-":
        typer.echo(text)
        return
    if path.exists() and not force:
        raise FerliteError(f"{path} exists; pass --force to overwrite it")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    except PermissionError:
        raise FerliteError(f"{path}: permission denied (sudo, or give another path)") from None
    from ferlite.console import wrote

    wrote(path)


SERVE_HELP = "The dashboard's unit instead (ferlite-serve.service: `ferlite serve` of the service's log, on localhost)."


@service_app.command("install")
def service_install_cmd(
    dry_run: Annotated[bool, typer.Option(help="Print the unit, the config and each step; change nothing.")] = False,
    config: Annotated[Path, typer.Option(help="Config file the service reads.")] = CONFIG_PATH,
    unit_dir: Annotated[Path, typer.Option(help="Where unit files live.")] = UNIT_DIR,
    serve: Annotated[bool, typer.Option("--serve", help=SERVE_HELP)] = False,
) -> None:
    """Install, enable and start the hardened systemd unit running `ferlite run --camera` (or, with --serve,
    the dashboard's)."""
    from ferlite.device import service

    unit = service.SERVE_UNIT if serve else service.UNIT_NAME
    executable = service.ferlite_executable()
    try:
        service.check_reachable(executable)
    except service.ServiceError as exc:
        if not dry_run:
            raise
        typer.echo(f"warning: {exc}", err=True)  # the dry run still shows what would be written
    steps = service.install_steps(executable, _default_config_text(), unit_dir, config, unit)
    name = unit.removesuffix(".service")
    typer.echo(service.perform(steps, dry_run)
               or f"{unit} installed and starting; follow it with: journalctl -u {name} -f")


@service_app.command("uninstall")
def service_uninstall_cmd(
    dry_run: Annotated[bool, typer.Option(help="Print each step; change nothing.")] = False,
    unit_dir: Annotated[Path, typer.Option(help="Where unit files live.")] = UNIT_DIR,
    serve: Annotated[bool, typer.Option("--serve", help=SERVE_HELP)] = False,
) -> None:
    """Stop, disable and remove the unit (the config and the results are kept)."""
    from ferlite.device import service

    unit = service.SERVE_UNIT if serve else service.UNIT_NAME
    typer.echo(service.perform(service.uninstall_steps(unit_dir, unit), dry_run) or f"{unit} removed")


@service_app.command("status")
def service_status_cmd(
    log: Annotated[Path, typer.Option(help="The service's results database.")] = STATE_DB,
    minutes: Annotated[int, typer.Option(help="How many recent minutes of results to show.")] = 10,
) -> None:
    """systemd's view of the service, then the faces per label of the last minutes."""
    from ferlite.device import service

    typer.echo(service.systemctl_status())
    typer.echo(service.recent_results(log, minutes))


# `ferlite serve`: the read-only local dashboard over a results log (device/serve/).

@app.command("serve")
def serve_cmd(
    log: Annotated[Path, typer.Argument(help="A device's SQLite results log, or a fleet collector's SQLite "
                                             "database.")] = Path("results.db"),
    host: Annotated[str, typer.Option(help="Address to listen on; any but localhost needs the token.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port (0: any free one).")] = 8765,
    token_file: Annotated[Path | None, typer.Option(help="File holding the access token (else FERLITE_SERVE_TOKEN; "
                                                          "else one is generated and printed on a non-local bind).")]
    = None,
) -> None:
    """Serve the Now, Timeline, Runs and Tracks views of a results log in the browser, read-only."""
    import os

    from ferlite.device.serve.app import read_token, serve

    serve(log, host, port, read_token(token_file, dict(os.environ)), lambda line: typer.echo(line, err=True))


# Fleet: many devices into one place over MQTT (ferlite[fleet]): publish a log, collect into one database.

MqttOpt = Annotated[str, typer.Option("--mqtt", help="Broker: mqtt://HOST[:PORT] or mqtts://HOST[:PORT]; CA file "
                                                     "and credentials come from --config.")]
FLEET_CONFIG_HELP = "TOML file with device_id, mqtt_ca, mqtt_username and mqtt_password(_file) (`ferlite config init`)."


@app.command("publish")
def publish_cmd(
    ctx: typer.Context,
    mqtt: MqttOpt,
    log: Annotated[Path, typer.Argument(help="The SQLite results log to send.")] = Path("results.db"),
    config: Annotated[Path | None, typer.Option(help=FLEET_CONFIG_HELP)] = None,
    device_id: Annotated[str | None, typer.Option(help=HELP["device_id"])] = _RUN.device_id,
    wait: Annotated[float, typer.Option(help="Give up after this many seconds without progress (the broker away "
                                             "or refusing).")] = 30.0,
    json_out: Annotated[bool, typer.Option("--json", help="Print what was sent as JSON.")] = False,
) -> None:
    """Send what a results log holds that the broker has not acknowledged yet (a Pi that was offline, a
    run without --mqtt); it goes on from the log's cursor and can be run again at any time."""
    import logging
    from dataclasses import asdict

    from ferlite.device.fleet.broker import broker_from_config, device_name
    from ferlite.device.fleet.publish import LogFeed, drain

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s", stream=sys.stderr)
    cfg = _device_config(ctx, config)
    broker = broker_from_config(cfg, mqtt)
    device = device_name(cfg)
    sent = drain(LogFeed(log, device, broker.name), broker, f"ferlite-{device}-publish", wait)
    if json_out:
        from ferlite.console import emit_json

        emit_json({"device": device, "broker": broker.name, **asdict(sent)})
        return
    typer.echo(f"{device} -> {broker.name}: {sent.runs} run updates, {sent.events} track events, {sent.counts} "
               "per-minute counts acknowledged; the log's cursor is at its end", err=True)


@app.command("collect")
def collect_cmd(
    ctx: typer.Context,
    mqtt: MqttOpt,
    db: Annotated[str, typer.Option("--db", help="Where to store: a SQLite file, or postgresql://USER@HOST:PORT/DB "
                                                 "(psycopg 3).")] = "collected.db",
    config: Annotated[Path | None, typer.Option(help=FLEET_CONFIG_HELP)] = None,
    client_id: Annotated[str | None, typer.Option(help="MQTT client id; the broker keeps this collector's messages "
                                                       "under it while it is away (default: "
                                                       "ferlite-collect-HOSTNAME).")] = None,
) -> None:
    """Subscribe to ferlite/# and store every device's runs, track events and counts in one database,
    until Ctrl-C or SIGTERM; duplicates are dropped, malformed messages said and ignored."""
    import logging

    from ferlite.device.fleet.broker import broker_from_config, device_name
    from ferlite.device.fleet.collect import collect_until_signal
    from ferlite.device.fleet.store import CollectedDb

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    cfg = _device_config(ctx, config)
    broker = broker_from_config(cfg, mqtt)
    store = CollectedDb(db)
    typer.echo(f"collecting ferlite/# from {broker.name} into {store.name}; Ctrl-C to stop", err=True)
    try:
        stats = collect_until_signal(broker, store, client_id or f"ferlite-collect-{device_name(cfg)}")
    finally:
        store.close()
    typer.echo(f"stored {stats['runs']} run updates, {stats['events']} track events, {stats['counts']} per-minute "
               f"counts; dropped {stats['duplicates']} duplicates, ignored {stats['ignored']} malformed messages",
               err=True)


# Personalising: the user's own faces, saved as the model sees them (`ferlite train cnn --init` learns from them).

@app.command("capture")
def capture_cmd(
    ctx: typer.Context,
    label: Annotated[str, typer.Option(help="The expression shown, e.g. happy: faces go to OUT/LABEL/.")],
    out: Annotated[Path, typer.Option("-o", "--out", help="Dataset folder, one sub-folder per label.")],
    config: Annotated[Path | None, typer.Option(help=CONFIG_HELP)] = None,
    camera: Annotated[bool, typer.Option("--camera", help=HELP["camera"])] = _RUN.camera,
    source: Annotated[str | None, typer.Option(help=HELP["source"])] = _RUN.source,
    every: Annotated[int, typer.Option(help="Save each tracked face every N frames (photos: every face).")] = 5,
    subject: Annotated[str | None, typer.Option(help="Who is shown: files are named SUBJECT__..., so training "
                                                "holds out whole people.")] = None,
    max_faces: Annotated[int, typer.Option(help="Stop after saving this many faces (0: no limit).")] = 0,
    bundle: Annotated[Path | None, typer.Option(help=HELP["bundle"])] = None,
    detector: Annotated[str | None, typer.Option(help=DETECTOR_HELP)] = _RUN.detector,
    min_face: Annotated[int, typer.Option(help=HELP["min_face"])] = _RUN.min_face,
    max_frames: Annotated[int, typer.Option(help=HELP["max_frames"])] = _RUN.max_frames,
) -> None:
    """Save the faces the device sees, aligned and framed as the model sees them, into OUT/LABEL/ (this
    writes face pixels)."""
    from ferlite.config import build_config
    from ferlite.device.capture import capture

    done = capture(build_config(config, _given(ctx)), label, out, every, subject, max_faces)
    typer.echo(f"{done.saved} faces saved to {done.folder} from {done.frames} frames ({done.faces} faces seen)",
               err=True)
    if not done.saved:
        from ferlite.errors import SourceError

        raise SourceError(f"{source or 'the camera'}: no face to save")


# `ferlite explain`: why the model said what it said. Occlusion maps, error gallery, reliability and confusion
# on the device runtime (device/explain.py); a .keras model adds Grad-CAM and first-layer figures (training/explain.py).

def _explained_model(path: Path, threads: int | None):
    """(model, extra maps, manifest) for `ferlite explain`: an int8 CNN bundle on the device runtime, or a
    float .keras model (manifest None), which alone brings Grad-CAM (and TensorFlow)."""
    if path.suffix == ".keras":
        from ferlite.training.explain import grad_cam_maps
        from ferlite.training.keras_model import KerasPredictor

        model = KerasPredictor(path)
        return model, grad_cam_maps(model.model, model.labels), None
    from ferlite.bundle import read_bundle
    from ferlite.runtime import Predictor

    bundle = read_bundle(path)
    if bundle.manifest.kind != "cnn":
        raise ConfigError(f"{path}: explain hides parts of the face image, which a {bundle.manifest.kind} bundle "
                          "never sees; give a CNN bundle")
    return Predictor(bundle, threads), None, bundle.manifest


def _explain_data(model, manifest, data: str, out: Path, name: str, gallery) -> dict:
    """The dataset report of `ferlite explain --data`; a .keras model's first-layer figure goes beside it."""
    from ferlite.device.explain import explain_dataset
    from ferlite.evaluate import Truth

    if manifest is not None:
        from ferlite.inputs import dataset_inputs

        dataset = Truth().faces(data, model.labels)
        return explain_dataset(model, dataset, dataset_inputs(manifest, dataset.images), out, name, gallery)
    from ferlite.preprocess import PreprocessSpec
    from ferlite.training.explain import first_layer_png

    dataset = Truth().faces(data, model.labels, PreprocessSpec(size=model.size))
    out.mkdir(parents=True, exist_ok=True)
    first_layer_png(model.model, dataset.images, dataset.labels, model.labels, out / "first-layer.png")
    return explain_dataset(model, dataset, dataset.images, out, name, gallery,
                           (("first layer: kernels and mean activation per class", "first-layer.png"),))


@app.command("explain")
def explain_cmd(
    ctx: typer.Context,
    photos: Annotated[list[Path] | None, typer.Argument(metavar="PHOTO_OR_FOLDER", help="Photos, or folders "
                                                        "of them: one PNG per face.")] = None,
    data: Annotated[str | None, typer.Option(help="Labelled faces instead of photos (.npz, FER2013 .csv[:Usage], "
                                             "a folder per class): error gallery, reliability, confusion.")] = None,
    out: Annotated[Path, typer.Option("-o", "--out", help="Folder for the PNGs and index.html.")] = Path("explain"),
    bundle: Annotated[Path | None, typer.Option(help="CNN bundle or shipped name (default: the shipped CNN), or a "
                                                     ".keras model (ferlite[train]): adds Grad-CAM and the first "
                                                     "layer's kernels and mean activations per class.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the numbers as JSON.")] = False,
    patch: Annotated[int, typer.Option(min=2, help="Side of the occluding patch, in model-input pixels.")] = 8,
    stride: Annotated[int, typer.Option(min=1, help="Step of the occluding patch, in model-input pixels.")] = 4,
    pairs: Annotated[int, typer.Option(min=1, help="With --data: confused class pairs in the gallery.")] = 4,
    per_pair: Annotated[int, typer.Option(min=1, help="With --data: mistakes shown per pair.")] = 6,
    config: Annotated[Path | None, typer.Option(help=CONFIG_HELP)] = None,
    detector: Annotated[str | None, typer.Option(help=DETECTOR_HELP)] = _RUN.detector,
    min_face: Annotated[int, typer.Option(help=HELP["min_face"])] = _RUN.min_face,
    detect_width: Annotated[int, typer.Option(help=HELP["detect_width"])] = _RUN.detect_width,
    threads: Annotated[int | None, typer.Option(help=HELP["threads"])] = _RUN.threads,
) -> None:
    """Why the model said it: occlusion maps per face of photos, or on labelled faces an error gallery,
    per-class reliability and the confusion matrix; PNGs and an index.html in --out."""
    from ferlite.console import emit_json, wrote
    from ferlite.device import explain
    from ferlite.errors import SourceError

    if (data is None) == (not photos):
        raise ConfigError("give photos or --data DATA (not both)")
    cfg = _device_config(ctx, config)
    path = _bundle_path(cfg.bundle)
    model, extra, manifest = _explained_model(path, cfg.threads)
    if data is not None:
        report = _explain_data(model, manifest, data, out, path.name, explain.Gallery(pairs, per_pair))
        if json_out:
            emit_json(report)
        else:
            explain.print_dataset(report)
        wrote(out / "index.html")
        return
    from ferlite.device.detectors import chosen_detector, make_detector
    from ferlite.device.faces import FaceStep
    from ferlite.device.sources import image_files

    missing = [str(p) for p in photos if not p.exists()]
    if missing:
        raise SourceError(f"no such image or folder: {', '.join(missing)}")
    files = [f for p in photos for f in (image_files(p) if p.is_dir() else [p])]
    finder = make_detector(chosen_detector(manifest.options if manifest else {}, cfg.detector), cfg.detect_width,
                           cfg.min_face, cfg.threads)
    step = FaceStep(finder, model) if manifest else explain.Framer(finder, model.size)
    records = explain.explain_photos(step, model, files, out, explain.Occlusion(patch, stride), extra)
    if json_out:
        emit_json(records)
    else:
        explain.print_photos(records)
    wrote(out / "index.html")
    if not any(rec["faces"] for rec in records):
        raise SourceError(f"no face found in any of the {len(files)} photos")


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
