"""House rule 1: ``model/`` is pure PyTorch + transformers. No file under it may import the distributed/launcher/
storage stack (checked on the parsed import statements, so strings and comments do not count)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

MODEL_DIR = Path(__file__).resolve().parent.parent / "model"
FORBIDDEN = ("ray", "deepspeed", "mlflow", "fsspec", "s3fs", "webdataset", "torch.distributed")


def imported_modules(path: Path) -> set[str]:
    """Absolute module names imported by ``path`` (``from x import y`` also yields ``x.y``)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def forbidden_imports(path: Path) -> list[str]:
    return sorted(name for name in imported_modules(path)
                  for bad in FORBIDDEN if name == bad or name.startswith(bad + "."))


def test_model_package_has_python_files():
    assert len(list(MODEL_DIR.rglob("*.py"))) >= 10


@pytest.mark.parametrize("path", sorted(MODEL_DIR.rglob("*.py")), ids=lambda p: str(p.relative_to(MODEL_DIR)))
def test_model_file_imports_no_infrastructure(path):
    assert forbidden_imports(path) == []


def test_checker_detects_forbidden_imports(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import ray.train\nfrom torch import distributed\nfrom torch.distributed import init_process_group\n"
                   "x = 'import mlflow'  # a string is not an import\n")
    assert forbidden_imports(bad) == ["ray.train", "torch.distributed", "torch.distributed.init_process_group"]
