"""What the CLI prints: rich tables for people, JSON (`--json`) for machines."""

from __future__ import annotations

import json
from pathlib import Path

from ferlite.bundle import Bundle
from ferlite.metrics import Metrics


def _console():
    from rich.console import Console

    return Console(highlight=False)


def emit_json(data: object) -> None:
    print(json.dumps(data, indent=2, default=str))


def print_conversion(figures: dict, path: Path | None, as_json: bool) -> None:
    if as_json:
        emit_json({"bundle": str(path) if path else None, **figures})
        return
    from rich.table import Table

    con = _console()
    modes = [("plain", figures)] + ([("flip-TTA", figures["tta_flip"])] if "tta_flip" in figures else [])
    for mode, f in modes:
        con.print(f"[bold]{mode}[/]: float {f['float']['accuracy']:.2%} · int8 {f['int8']['accuracy']:.2%} · "
                  f"agreement {f['agreement']:.2%} on {figures['samples']} faces ({figures['data']})")
    table = Table("class", "float acc", "int8 acc", "support")
    for name, row in figures["per_class"].items():
        table.add_row(name, f"{row['float']:.2%}", f"{row['int8']:.2%}", str(row["support"]))
    con.print(table)
    con.print(f"int8 weights: {figures['quantization']}")
    con.print(f"bundle: {path}" if path else "no bundle written")


def print_info(bundle: Bundle, runtime: str | None, as_json: bool) -> None:
    m = bundle.manifest
    size = bundle.path.stat().st_size
    if as_json:
        emit_json({"path": str(bundle.path), "bytes": size, "checksum": "ok", "runtime": runtime,
                   "manifest": json.loads(m.to_json())})
        return
    con = _console()
    metrics = m.metrics
    con.print(f"[bold]{bundle.path}[/] ({size / 1024:.1f} KiB, format {m.format}, kind {m.kind})")
    con.print(f"labels: {', '.join(m.labels)}")
    con.print(f"input: {m.input.shape} {m.input.dtype} (scale {m.input.scale:g}, zero point {m.input.zero_point}); "
              f"preprocess {m.preprocess}")
    con.print(f"model.tflite: {m.model_bytes / 1024:.1f} KiB, sha256 {m.model_sha256[:16]}… checksum ok")
    if metrics:
        con.print(f"verified on {metrics.get('samples')} faces of {metrics.get('data')}: "
                  f"float {metrics['float']['accuracy']:.2%}, int8 {metrics['int8']['accuracy']:.2%}, "
                  f"agreement {metrics['agreement']:.2%}")
        if "tta_flip" in metrics:
            t = metrics["tta_flip"]
            con.print(f"  with flip-TTA: float {t['float']['accuracy']:.2%}, int8 {t['int8']['accuracy']:.2%}")
    if m.options:
        con.print(f"options: {m.options}")
    p = m.provenance
    if p:
        con.print(f"made {p.get('created_utc')} by ferlite {p.get('ferlite_version')} "
                  f"(commit {str(p.get('git_commit'))[:10]})"
                  + (f" from {p['training_data']}" if p.get("training_data") else ""))
    if runtime:
        con.print(f"runtime: {runtime}")


def print_metrics(metrics: Metrics, details: dict, as_json: bool) -> None:
    if as_json:
        emit_json({**details, **metrics.to_dict()})
        return
    from rich.table import Table

    con = _console()
    modes = [details["runtime"]] + ["flip-TTA"] * bool(details["tta_flip"])
    if details.get("temperature", 1.0) != 1.0:
        modes.append(f"temperature {details['temperature']}")
    con.print(f"[bold]{details['model']}[/] on {details['data']}, {details['truth']} ({', '.join(modes)})")
    con.print(f"accuracy {metrics.accuracy:.2%} · top-2 {metrics.top2:.2%} · macro-F1 {metrics.macro_f1:.3f} · "
              f"ECE {metrics.ece:.3f} · {metrics.samples} faces")
    if "detector" in details:
        con.print(f"{details['detector']} found a face in {details['images'] - details['no_face']} of "
                  f"{details['images']} images; the others are not scored")
    table = Table("class", "precision", "recall", "F1", "support")
    for c in metrics.per_class:
        table.add_row(c.name, f"{c.precision:.3f}", f"{c.recall:.3f}", f"{c.f1:.3f}", str(c.support))
    con.print(table)
    names = [c.name[:7] for c in metrics.per_class]
    cm = Table("true \\ pred", *names, title="confusion matrix")
    for c, row in zip(metrics.per_class, metrics.confusion):
        cm.add_row(c.name, *(str(v) for v in row))
    con.print(cm)


