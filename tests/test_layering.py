"""The layer tables of docs/architecture.md, enforced on the parsed import statements of ``model/`` and
``pipelines/`` (strings and comments do not count): each module belongs to exactly one row, imports only the layers
its row allows, and reaches another stage only through the listed modules. ``model/`` is pure PyTorch +
transformers: none of the distributed/launcher/storage stack."""

from __future__ import annotations

import ast
import re
from fnmatch import fnmatchcase
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MODEL_DIR = ROOT / "model"
FORBIDDEN = ("ray", "deepspeed", "mlflow", "fsspec", "s3fs", "webdataset", "torch.distributed")
STAGES = ("ingest", "teachers", "train", "eval", "serve")


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


def _table(title_cell: str) -> list[list[str]]:
    """Rows of the Markdown table of docs/architecture.md whose header starts with ``title_cell``."""
    lines = (ROOT / "docs" / "architecture.md").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {title_cell} |"))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def _globs(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


LAYERS = [(layer, _globs(modules), [a.strip() for a in allowed.split(",")])
          for layer, modules, allowed in _table("layer")]
CROSS_STAGE = {_globs(src)[0]: _globs(dst) for src, dst in _table("from")}


def _matches(rel: str, pattern: str) -> bool:
    return fnmatchcase(rel, pattern) or (pattern.endswith("/**") and rel.startswith(pattern[:-2]))


def layer_of(rel: str) -> str | None:
    found = [layer for layer, globs, _ in LAYERS if any(_matches(rel, g) for g in globs)]
    assert len(found) <= 1, f"{rel} is in several layers: {found}"
    return found[0] if found else None


def stage_of(rel: str) -> str | None:
    parts = rel.split("/")
    return parts[1] if len(parts) > 2 and parts[0] == "pipelines" and parts[1] in STAGES else None


def module_file(name: str) -> str | None:
    """The repository file of an imported ``model``/``pipelines`` module name (``None``: a library)."""
    if name.split(".")[0] not in ("model", "pipelines"):
        return None
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        base = ROOT.joinpath(*parts[:cut])
        if base.with_suffix(".py").is_file():
            return base.with_suffix(".py").relative_to(ROOT).as_posix()
        if (base / "__init__.py").is_file():
            return (base / "__init__.py").relative_to(ROOT).as_posix()
    return None


SOURCES = sorted(p.relative_to(ROOT).as_posix() for d in ("model", "pipelines") for p in (ROOT / d).rglob("*.py"))


def test_the_tables_are_read():
    assert [layer for layer, _, _ in LAYERS] == ["model", "foundations", "services", "stages", "entry points"]
    assert set(CROSS_STAGE) == {"pipelines/teachers/**", "pipelines/eval/**", "pipelines/train/**"}


def violations(rel: str, names: set[str]) -> list[str]:
    """Why importing ``names`` from the file ``rel`` breaks the tables (empty: it does not)."""
    layer = layer_of(rel)
    if layer is None:
        return [f"{rel} is in no layer of docs/architecture.md"]
    allowed = next(a for name, _, a in LAYERS if name == layer)
    found = []
    for name in sorted(names):
        target = module_file(name)
        if target is None or target == rel:
            continue
        target_layer = layer_of(target)
        src, dst = stage_of(rel), stage_of(target)
        if layer == target_layer == "stages" and src != dst:
            extra = next((mods for pattern, mods in CROSS_STAGE.items() if _matches(rel, pattern)), [])
            if not any(name == m or name.startswith(m + ".") for m in extra):
                found.append(f"{rel} (stage {src}) imports {name} of stage {dst}, not in the cross-stage table")
        elif not (target_layer in allowed or (target_layer == "stages" and "its own stage" in allowed
                                              and src == dst)):
            found.append(f"{rel} ({layer}) imports {name} ({target_layer}); the table allows {allowed}")
    return found


@pytest.mark.parametrize("rel", SOURCES)
def test_every_import_follows_the_layer_table(rel):
    assert violations(rel, imported_modules(ROOT / rel)) == []


def test_the_checker_finds_each_kind_of_violation():
    assert "(foundations) imports pipelines.ingest.config (stages)" in violations(
        "pipelines/schema.py", {"pipelines.ingest.config"})[0]
    assert "not in the cross-stage table" in violations("pipelines/serve/app.py", {"pipelines.train.config"})[0]
    assert violations("pipelines/teachers/job.py", {"pipelines.ingest.job"}) == []
    assert "(model) imports pipelines.storage" in violations("model/vidllm.py", {"pipelines.storage"})[0]
    assert violations("pipelines/new_module.py", set()) == ["pipelines/new_module.py is in no layer of "
                                                            "docs/architecture.md"]


@pytest.mark.parametrize("path", sorted(MODEL_DIR.rglob("*.py")), ids=lambda p: str(p.relative_to(MODEL_DIR)))
def test_model_file_imports_no_infrastructure(path):
    assert forbidden_imports(path) == []


def test_checker_detects_forbidden_imports(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import ray.train\nfrom torch import distributed\nfrom torch.distributed import init_process_group\n"
                   "x = 'import mlflow'  # a string is not an import\n")
    assert forbidden_imports(bad) == ["ray.train", "torch.distributed", "torch.distributed.init_process_group"]


def test_checker_places_modules_and_finds_their_files():
    assert layer_of("pipelines/schema.py") == "foundations" and layer_of("pipelines/serve/app.py") == "stages"
    assert layer_of("pipelines/ingest/synthetic/render.py") == "stages" and layer_of("model/heads/dpt.py") == "model"
    assert module_file("pipelines.ingest.job.init_ray") == "pipelines/ingest/job.py"
    assert module_file("pipelines.storage") == "pipelines/storage.py" and module_file("numpy") is None
