"""The layering of docs/architecture.md, read from the source: no module imports a layer above
its own (at the top of the file or inside a function), and torch is imported only where
training and the torch runtime live, so that everything a base install runs works without it."""

import ast
import subprocess
import sys
from pathlib import Path

from conftest import ROOT

PACKAGE = ROOT / "imgembed"

# Lowest first: a module may import its own layer and the layers before it.
LAYERS = ["base", "imaging", "index", "collection", "model", "inference", "train", "api", "web", "cli"]
BASE = {"imgembed", "imgembed.errors", "imgembed.config"}

# The torch side: the only modules that import torch at their top, and so the only ones that a
# module importing nothing heavy at its top may not import there either.
TORCH_MODULES = {"imgembed.model.network", "imgembed.model.efficientnet_lite", "imgembed.model.heads",
                 "imgembed.model.precision", "imgembed.train.loop", "imgembed.train.losses",
                 "imgembed.train.featcache", "imgembed.train.blend"}
# Layers whose functions may import torch (or a torch module) when the torch runtime or training
# is asked for.
TORCH_LAZY_LAYERS = {"model", "inference", "train", "cli"}


def layer_of(module: str) -> str:
    if module in BASE:
        return "base"
    if module == "imgembed.__main__":  # `python -m imgembed`: the command line
        return "cli"
    return module.split(".")[1]


def modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def imports(module: str, path: Path):
    """``(target module, top level?)`` of each import in ``module``, TYPE_CHECKING blocks left out."""
    tree = ast.parse(path.read_text())
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for n in ast.walk(node))
    top = {id(n) for n in tree.body}
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            names = [target] if node.module else [f"{target}.{a.name}" for a in node.names]
            for name in names:
                yield name, id(node) in top
        elif isinstance(node, ast.Import):
            for a in node.names:
                yield a.name, id(node) in top


def own(target: str, known: dict) -> str | None:
    """The imgembed module an import names (a name imported from a module maps to the module)."""
    while target and target not in known:
        target = target.rpartition(".")[0]
    return target or None


def test_no_module_imports_a_layer_above_its_own():
    known = modules()
    wrong = []
    for module, path in known.items():
        for target, _ in imports(module, path):
            if not target.startswith("imgembed"):
                continue
            target = own(target, known)
            if target and LAYERS.index(layer_of(target)) > LAYERS.index(layer_of(module)):
                wrong.append(f"{module} -> {target}")
    assert not wrong, wrong


def test_torch_is_imported_only_by_the_torch_side():
    known = modules()
    wrong = []
    for module, path in known.items():
        for target, at_top in imports(module, path):
            is_torch = target.split(".")[0] in ("torch", "torchvision") or own(target, known) in TORCH_MODULES
            if not is_torch or module in TORCH_MODULES:
                continue
            if at_top or layer_of(module) not in TORCH_LAZY_LAYERS:
                wrong.append(f"{module} imports {target}" + (" at its top" if at_top else ""))
    assert not wrong, wrong


def test_importing_every_module_off_the_torch_side_loads_no_torch():
    names = sorted(m for m in modules() if m not in TORCH_MODULES and m != "imgembed.__main__")
    probe = (f"import importlib, sys\nfor name in {names!r}:\n    importlib.import_module(name)\n"
             "print(sorted(m for m in ('torch', 'torchvision') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, timeout=300,
                         check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"
