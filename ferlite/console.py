"""Everything the CLI prints goes through here: rich tables for people, JSON (`--json`) for machines.

On a terminal, tables fit its width, cells folded rather than cut; piped or written to a file,
everything prints whole.
"""

from __future__ import annotations

import json
from pathlib import Path

from ferlite.bundle import Bundle
from ferlite.metrics import Metrics

WHOLE = 100_000  # columns when the output is not a terminal: nothing is ever cut


def console():
    import sys

    from rich.console import Console

    return Console(highlight=False, width=None if sys.stdout.isatty() else WHOLE)


def table(*headers: str, title: str | None = None):
    """A table whose cells fold onto more lines on a narrow terminal instead of ending in '…'."""
    from rich.table import Column, Table

    return Table(*(Column(h, overflow="fold") for h in headers), title=title)


def progress(items, description: str):
    """`items`, with a progress bar on stderr while it is a terminal (stdout stays clean for --json)."""
    import sys

    from rich.console import Console
    from rich.progress import track

    return track(items, description=description, transient=True, console=Console(stderr=True),
                 disable=not sys.stderr.isatty())


def wrote(path: Path | str) -> None:
    """Name a file a command wrote, on stderr, so --json output stays machine-clean."""
    import sys

    print(f"wrote {path}", file=sys.stderr)


def emit_json(data: object) -> None:
    print(json.dumps(data, indent=2, default=str))


def print_conversion(figures: dict, path: Path | None, as_json: bool) -> None:
    if as_json:
        emit_json({"bundle": str(path) if path else None, **figures})
        return
    con = console()
    modes = [("plain", figures)] + ([("flip-TTA", figures["tta_flip"])] if "tta_flip" in figures else [])
    for mode, f in modes:
        con.print(f"[bold]{mode}[/]: float {f['float']['accuracy']:.2%} · int8 {f['int8']['accuracy']:.2%} · "
                  f"agreement {f['agreement']:.2%} on {figures['samples']} faces ({figures['data']})")
    rows = table("class", "float acc", "int8 acc", "support")
    for name, row in figures["per_class"].items():
        rows.add_row(name, f"{row['float']:.2%}", f"{row['int8']:.2%}", str(row["support"]))
    con.print(rows)
    con.print(f"int8 weights: {figures['quantization']}")
    con.print(f"bundle: {path}" if path else "no bundle written")


def summarised(value: object, longest: int = 8) -> object:
    """A manifest field for people: lists longer than `longest` become "[N values]" (a landmark model's
    per-feature means and deviations are hundreds of floats); `--json` prints everything."""
    if isinstance(value, dict):
        return {k: summarised(v, longest) for k, v in value.items()}
    if isinstance(value, list | tuple) and len(value) > longest:
        return f"[{len(value)} values]"
    return value


def print_info(bundle: Bundle, runtime: str | None, as_json: bool) -> None:
    m = bundle.manifest
    size = bundle.path.stat().st_size
    if as_json:
        emit_json({"path": str(bundle.path), "bytes": size, "checksum": "ok", "runtime": runtime,
                   "manifest": json.loads(m.to_json())})
        return
    con = console()
    metrics = m.metrics
    con.print(f"[bold]{bundle.path}[/] ({size / 1024:.1f} KiB, format {m.format}, kind {m.kind})")
    con.print(f"labels: {', '.join(m.labels)}")
    con.print(f"input: {m.input.shape} {m.input.dtype} (scale {m.input.scale:g}, zero point {m.input.zero_point}); "
              f"preprocess {summarised(m.preprocess)}")
    con.print(f"model.tflite: {m.model_bytes / 1024:.1f} KiB, sha256 {m.model_sha256[:16]}… checksum ok")
    if metrics:
        con.print(f"verified on {metrics.get('samples')} faces of {metrics.get('data')}: "
                  f"float {metrics['float']['accuracy']:.2%}, int8 {metrics['int8']['accuracy']:.2%}, "
                  f"agreement {metrics['agreement']:.2%}")
        if "tta_flip" in metrics:
            t = metrics["tta_flip"]
            con.print(f"  with flip-TTA: float {t['float']['accuracy']:.2%}, int8 {t['int8']['accuracy']:.2%}")
    if m.options:
        con.print(f"options: {summarised(m.options)}")
    p = m.provenance
    if p:
        con.print(f"made {p.get('created_utc')} by ferlite {p.get('ferlite_version')} "
                  f"(commit {str(p.get('git_commit'))[:10]})"
                  + (f" from {p['training_data']}" if p.get("training_data") else ""))
    if runtime:
        con.print(f"runtime: {runtime}")
    from ferlite.bundles import SHIPPED

    con.print(f"shipped bundles (name them with --bundle NAME): {', '.join(SHIPPED)}; cnn is the default")


def print_metrics(metrics: Metrics, details: dict, as_json: bool) -> None:
    if as_json:
        emit_json({**details, **metrics.to_dict()})
        return
    con = console()
    modes = [details["runtime"]] + ["flip-TTA"] * bool(details["tta_flip"])
    if details.get("temperature", 1.0) != 1.0:
        modes.append(f"temperature {details['temperature']}")
    con.print(f"[bold]{details['model']}[/] on {details['data']}, {details['truth']} ({', '.join(modes)})")
    con.print(f"accuracy {metrics.accuracy:.2%} · top-2 {metrics.top2:.2%} · macro-F1 {metrics.macro_f1:.3f} · "
              f"ECE {metrics.ece:.3f} · {metrics.samples} faces")
    if "detector" in details:
        con.print(f"{details['detector']} found a face in {details['images'] - details['no_face']} of "
                  f"{details['images']} images; the others are not scored")
    rows = table("class", "precision", "recall", "F1", "support")
    for c in metrics.per_class:
        rows.add_row(c.name, f"{c.precision:.3f}", f"{c.recall:.3f}", f"{c.f1:.3f}", str(c.support))
    con.print(rows)
    names = [c.name[:7] for c in metrics.per_class]
    cm = table("true \\ pred", *names, title="confusion matrix")
    for c, row in zip(metrics.per_class, metrics.confusion):
        cm.add_row(c.name, *(str(v) for v in row))
    con.print(cm)


