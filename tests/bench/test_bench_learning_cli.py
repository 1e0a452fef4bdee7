"""The learning benchmark's flags and output-folder reuse (no training: `test_learning_quick.py` runs it)."""

from __future__ import annotations

import importlib.util
import sys

import pytest

from tests.conftest import REPO_ROOT


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_learning", REPO_ROOT / "bench" / "bench_learning.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules[spec.name]


def _key(bench, *argv: str) -> str:
    args = bench.build_parser().parse_args(["--quick", *argv])
    args.encoder = ""
    return bench.fingerprint(args, bench.resolve_size(args))


def test_quick_size_trains_at_the_measured_learning_rate(bench):
    args = bench.build_parser().parse_args(["--quick"])
    size = bench.resolve_size(args)
    assert (size.lr, size.stage2_steps, size.short_side, size.train_scenes) == (7.5e-4, 600, 56, 256)
    assert size.variants == ("full", "blind") and size.families == ("color",)


def test_default_size_is_the_quick_recipe_on_every_family_with_grounding_and_the_ablations(bench):
    args = bench.build_parser().parse_args([])
    size = bench.resolve_size(args)
    quick = bench.resolve_size(bench.build_parser().parse_args(["--quick"]))
    assert (size.lr, size.stage2_steps, size.short_side, size.train_scenes) == (
        quick.lr, quick.stage2_steps, quick.short_side, quick.train_scenes)
    assert size.families == ("counting", "color", "existence", "relative_position", "size")
    assert size.variants == ("full", "blind", "no_bridge", "no_metric_depth")
    assert size.grounding and size.noise_seeds == 1 and size.class_probability == 0.5
    assert args.encoder == ""


def test_an_encoder_folder_without_weights_is_one_clear_error(bench, tmp_path, capsys):
    missing = tmp_path / "dinov2-small"
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["--encoder", str(missing), "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"--encoder {missing}: no config.json" in err
    assert not (tmp_path / "out").exists()


def test_more_variants_or_noise_seeds_reuse_the_folder_other_training_settings_do_not(bench):
    base = _key(bench)
    assert _key(bench, "--variants", "full,blind,no_bridge,no_metric_depth") == base
    assert _key(bench, "--noise-seeds", "2") == base
    for changed in (("--lr", "1.5e-3"), ("--stage2-steps", "400"), ("--train-seed", "3"), ("--short-side", "112")):
        assert _key(bench, *changed) != base, changed


def test_an_output_folder_refuses_a_run_with_other_settings(bench, tmp_path):
    out = str(tmp_path / "bench")
    bench.prepare_out(out, False, "a")
    bench.prepare_out(out, False, "a")
    with pytest.raises(ValueError, match="other settings"):
        bench.prepare_out(out, False, "b")
    bench.prepare_out(out, True, "b")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("x")
    with pytest.raises(ValueError, match="refusing to delete"):
        bench.prepare_out(str(tmp_path / "other"), True, "a")
    assert (tmp_path / "other" / "keep.txt").is_file()


def test_variants_without_the_blind_baseline_are_refused(bench):
    args = bench.build_parser().parse_args(["--quick", "--variants", "full,no_bridge"])
    with pytest.raises(ValueError, match="must include full and blind"):
        bench.resolve_size(args)
