"""Bring an existing CNN bundle up to what conversion now records, without its Keras model: the
temperature fitted on held faces (int8, as the device runs it) and FER2013's framing recipes."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from ferlite.bundle import Bundle, read_bundle, write_bundle
from ferlite.calibration import calibration_figures
from ferlite.errors import FerliteError
from ferlite.evaluate import Truth, predict_dataset
from ferlite.inputs import dataset_inputs
from ferlite.preprocess import FER2013_FRAMING, PreprocessSpec
from ferlite.runtime import Predictor


def calibrate_bundle(path: Path, data: str, out: Path) -> tuple[Bundle, dict]:
    """The bundle at `path` with its temperature fitted on `data` and, where its recipe names no detector,
    FER2013's framing, written to `out`; (new bundle, calibration figures)."""
    bundle = read_bundle(path)
    if bundle.manifest.kind != "cnn":
        raise FerliteError(f"{path}: calibrate applies to cnn bundles (this one is {bundle.manifest.kind})")
    manifest = bundle.manifest
    spec = PreprocessSpec.from_dict(manifest.preprocess)
    if not spec.framing:
        manifest.preprocess = replace(spec, framing=FER2013_FRAMING).to_dict()
    predictor = Predictor(bundle, calibrated=False)
    faces = Truth().faces(data, predictor.labels)
    probs = predict_dataset(predictor, dataset_inputs(manifest, faces.images), description="calibrating")
    figures = {**calibration_figures(faces.labels, probs), "data": data}
    manifest.options = {**manifest.options, "temperature": figures["temperature"]}
    manifest.metrics = {**manifest.metrics, "temperature": figures}
    write_bundle(out, manifest, bundle.model)
    return read_bundle(out), figures
