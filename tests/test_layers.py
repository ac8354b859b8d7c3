"""The import contract: arrows point down to the core. Every import in every module counts, the lazy
ones inside functions too, so the layers in ../shared/notes/architecture.md cannot drift.

    core (ferlite/, but cli.py)  imports no stage
    device                       imports neither training nor convert, nor TensorFlow
    training                     imports neither convert nor device
    convert                      imports training's Keras helpers, never device
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STAGES = {"training": "ferlite.training", "convert": "ferlite.convert", "device": "ferlite.device",
          "systemd": "ferlite.systemd"}
FORBIDDEN = {
    "core": ("ferlite.training", "ferlite.convert", "ferlite.device", "ferlite.systemd"),
    "device": ("ferlite.training", "ferlite.convert", "tensorflow", "keras"),
    "training": ("ferlite.convert", "ferlite.device"),
    "convert": ("ferlite.device",),
}
TOP_OF_THE_HOUSE = {ROOT / "ferlite" / "cli.py", ROOT / "ferlite" / "__main__.py"}


def layer_files(layer: str, root: Path = ROOT) -> list[Path]:
    if layer == "core":
        return [p for p in sorted((root / "ferlite").rglob("*.py")) if p not in TOP_OF_THE_HOUSE]
    return sorted((root / layer).rglob("*.py"))


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[0] in STAGES:
        parts = [*STAGES[parts[0]].split("."), *parts[1:]]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, root: Path) -> list[tuple[int, str]]:
    """(line, module) for every import in the file, relative ones resolved."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.append((node.lineno, base))
    return found


def violations(layer: str, root: Path = ROOT) -> list[str]:
    return [f"{path.relative_to(root)}:{line} imports {name}" for path in layer_files(layer, root)
            for line, name in imports(path, root)
            if any(name == banned or name.startswith(banned + ".") for banned in FORBIDDEN[layer])]


@pytest.mark.parametrize("layer", list(FORBIDDEN))
def test_layers_import_only_downwards(layer):
    assert layer_files(layer), f"no modules found for {layer}"
    assert violations(layer) == []


def test_the_contract_sees_lazy_and_relative_imports(tmp_path):
    """A module that breaks the contract in a function body, relatively, is caught."""
    (tmp_path / "training").mkdir()
    (tmp_path / "training" / "bad.py").write_text("def f():\n    from ..convert import quantize\n")
    (tmp_path / "training" / "__init__.py").write_text("")
    assert violations("training", tmp_path) == ["training/bad.py:2 imports ferlite.convert"]
