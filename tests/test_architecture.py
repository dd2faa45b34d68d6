"""The architecture on the AST: stages import only earlier stages and the runtime package (training -> export ->
calibration), also inside functions; the runtime package imports no stage (the PyTorch backend building the
model from a checkpoint is the one exception); pipelines and the CLI sit above everything. And no module of the
installed tree is over 500 lines."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# folder in the repository -> its name in the installed namespace (setup.py's PACKAGE_DIR)
FOLDERS = {"edgereid": "edgereid", "training": "edgereid.training", "export": "edgereid.export",
           "calibration": "edgereid.calibration"}
STAGES = ("training", "export", "calibration")  # in pipeline order
ABOVE = ("pipelines", "cli")  # may import any stage (inside the function that needs it)
# (importing module, imported layer) pairs allowed outside the rules
EXCEPTIONS = {("edgereid.backends.torch_backend", "training")}
MAX_LINES = 500


def layer(module: str) -> str:
    """'runtime', a stage name, 'pipelines' or 'cli' for an edgereid module name."""
    parts = module.split(".")
    if parts[0] != "edgereid" or len(parts) == 1:
        return "runtime"
    return parts[1] if parts[1] in STAGES + ABOVE else "runtime"


def allowed(src_layer: str, dst_layer: str) -> bool:
    """May a module of src_layer import one of dst_layer?"""
    if src_layer == "cli" or dst_layer == "runtime" or src_layer == dst_layer:
        return True
    if src_layer == "pipelines":
        return dst_layer in STAGES
    if src_layer in STAGES and dst_layer in STAGES:
        return STAGES.index(dst_layer) < STAGES.index(src_layer)
    return False


def modules(root: Path):
    """(installed module name, path) of every .py file of the installed tree under `root`."""
    for folder, package in FOLDERS.items():
        for path in sorted((root / folder).rglob("*.py")):
            rel = path.relative_to(root / folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            yield ".".join([package, *parts]), path


def imported_modules(module: str, path: Path) -> list:
    """(line, module) for every import in the file, at any depth (functions, classes, try blocks)."""
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            # `from edgereid import training` imports the stage package itself.
            found += [(node.lineno, f"{target}.{a.name}" if layer(target) == "runtime" else target)
                      for a in node.names]
    return list(dict.fromkeys((line, name) for line, name in found if name.split(".")[0] == "edgereid"))


def violations(root: Path) -> list:
    """'file:line: module (layer) imports name (layer)' for every import against the rules."""
    out = []
    for module, path in modules(root):
        src = layer(module)
        for line, name in imported_modules(module, path):
            dst = layer(name)
            if allowed(src, dst) or (module, dst) in EXCEPTIONS:
                continue
            out.append(f"{path.relative_to(root)}:{line}: {module} ({src}) imports {name} ({dst})")
    return out


def test_stages_import_only_earlier_stages_and_the_runtime_package():
    found = violations(ROOT)
    assert not found, "imports against the stage order (see DESIGN.md):\n" + "\n".join(found)


def _tree(tmp_path: Path, files: dict) -> Path:
    for rel, text in files.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    for folder in FOLDERS:
        (tmp_path / folder).mkdir(exist_ok=True)
    return tmp_path


def test_checker_sees_backward_imports_inside_functions_and_relative_ones(tmp_path):
    root = _tree(tmp_path, {
        "export/trt_build.py": "def build():\n    from edgereid.calibration.trt_calibrator import make\n",
        "edgereid/backends/tensorrt_backend.py": "class B:\n    def __init__(self):\n"
                                                  "        from edgereid.export import engine_sidecar\n",
        "edgereid/backends/torch_backend.py": "def load():\n    from edgereid.training.checkpoint import load\n",
        "edgereid/gallery.py": "from edgereid import training\nfrom . import distances\n",
        "training/quickstart.py": "def run():\n    import edgereid.export.onnx_export\n"
                                  "    from ..pipelines import quickstart\n",
        "calibration/int8.py": "from edgereid.export.metadata import load_onnx\nfrom .qdq import fold\n",
        "edgereid/pipelines/quickstart.py": "from edgereid.calibration.int8 import q\nfrom edgereid.training import t\n",
        "edgereid/cli/main.py": "from edgereid.pipelines.quickstart import run\n",
    })
    found = violations(root)
    assert found == [
        "edgereid/backends/tensorrt_backend.py:3: edgereid.backends.tensorrt_backend (runtime) imports "
        "edgereid.export (export)",
        "edgereid/gallery.py:1: edgereid.gallery (runtime) imports edgereid.training (training)",
        "training/quickstart.py:2: edgereid.training.quickstart (training) imports edgereid.export.onnx_export "
        "(export)",
        "training/quickstart.py:3: edgereid.training.quickstart (training) imports edgereid.pipelines (pipelines)",
        "export/trt_build.py:2: edgereid.export.trt_build (export) imports edgereid.calibration.trt_calibrator "
        "(calibration)",
    ]


@pytest.mark.parametrize("folder", sorted(FOLDERS))
def test_no_module_is_over_500_lines(folder):
    long = {str(p.relative_to(ROOT)): n for p in (ROOT / folder).rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"split these modules (over {MAX_LINES} lines): {long}"
