"""`ghostnet visualize`: intrinsic maps next to the ghost maps made from them (the paper's Figure 1)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import ghostnet
from ghostnet.cli import main
from ghostnet.convert.checkpoints import save_checkpoint
from ghostnet.viz import ghost_feature_maps
from support.numerics import GroupedConvAsEinsum, assert_float32_parity, float64_copy

pytestmark = pytest.mark.usefixtures("one_thread")

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def image_file(tmp_path):
    """A generated 96x80 RGB picture: colour ramps and a bright disc, so that maps have edges and gradients."""
    yy, xx = np.mgrid[0:80, 0:96]
    rgb = np.stack([xx * 255 / 95, yy * 255 / 79, np.full_like(xx, 60.0)], axis=-1)
    rgb[(yy - 40) ** 2 + (xx - 48) ** 2 < 400] = (250, 240, 30)
    path = tmp_path / "scene.png"
    Image.fromarray(rgb.astype(np.uint8)).save(path)
    return path


def test_ghost_maps_are_the_cheap_operation_of_the_intrinsic_maps() -> None:
    model = ghostnet.create_model("ghostnet_050").eval()
    image = torch.randn(1, 3, 64, 64)
    maps = ghost_feature_maps(model, image, layer=2)
    module = model.blocks[1][0].ghost1
    assert maps.path == "blocks.1.0.ghost1" and maps.ratio == 2 and maps.depthwise
    assert maps.intrinsic.shape[0] == module.init_chs and maps.ghost.shape[0] == module.new_chs
    with torch.no_grad():
        expected_ghosts = module.cheap_operation(maps.intrinsic[None].clone())[0]
        expected_intrinsic = module.primary_conv(model.blocks[0](model.forward_stem(image)))[0]
    torch.testing.assert_close(maps.ghost, expected_ghosts)
    torch.testing.assert_close(maps.intrinsic, expected_intrinsic)
    # With s = 2 each intrinsic map has exactly one ghost, made by its own d x d filter.
    assert torch.equal(maps.ghosts_of(3), maps.ghost[3:4])


def test_v3_training_form_maps() -> None:
    model = ghostnet.create_model("ghostnetv3_050").eval()
    x = torch.randn(1, 3, 64, 64)
    maps = ghost_feature_maps(model, x, layer=0)
    # The truth: the same maps from a float64 copy (the tool hands them back in float32: half an ulp).
    with torch.no_grad(), GroupedConvAsEinsum():
        truth = ghost_feature_maps(float64_copy(model), x.double(), layer=0)
    module = model.blocks[0][0].ghost1
    assert maps.intrinsic.shape[0] == module.init_chs and maps.ghost.shape[0] == module.new_chs
    with torch.no_grad():
        module.reparameterize()
        fused = module.cheap_operation(maps.intrinsic[None].clone())[0]
    # The captured training-form maps are those of the one fused cheap conv, to float32 rounding (support/numerics.py).
    assert_float32_parity(fused, maps.ghost, truth.ghost, what="reparameterized cheap operation")


def test_cli_writes_the_grid(image_file, tmp_path, capsys) -> None:
    model = ghostnet.create_model("ghostnet_050")
    weights = tmp_path / "w.safetensors"
    save_checkpoint(model.state_dict(), weights)
    out = tmp_path / "figs" / "grid.png"
    rc = main(["visualize", str(image_file), "--model", "ghostnet_050", "--weights", str(weights), "--layer", "1",
               "--num-maps", "4", "--output", str(out)])
    assert rc == 0
    assert "blocks.0.0.ghost2: 4 intrinsic and 4 ghost maps of 112x112" in capsys.readouterr().out
    assert out.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(out) as png:
        assert png.width > png.height > 50  # 4 pairs side by side, one row
    assert not list(out.parent.glob("*.tmp"))


@pytest.mark.parametrize("args, message", [
    (["--layer", "32"], "layer must be in 0..31"),
    (["--weights", "missing.pt"], "weights file not found"),
    (["--output", "grid.jpg"], "ending in .png"),
])
def test_cli_errors(image_file, args, message, tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["visualize", str(image_file), "--model", "ghostnet_050", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err
    assert not list(tmp_path.glob("*ghost-maps*")) and not (tmp_path / "grid.jpg").exists()


def test_cli_rejects_a_corrupt_image(tmp_path, capsys) -> None:
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image")
    assert main(["visualize", str(bad), "--model", "ghostnet_050", "--output", str(tmp_path / "o.png")]) == 2
    assert "cannot read image" in capsys.readouterr().err


@pytest.mark.slow
def test_every_plot_is_made_without_pyplot(tmp_path) -> None:
    """One way to make a figure (`viz.figure`): training curves, a confusion matrix, a benchmark plot and a profile
    plot leave pyplot unimported (no backend chosen, no global state) and write PNGs atomically."""
    import subprocess
    import sys

    code = f"""
import sys, torch
from pathlib import Path
from ghostnet.analysis import profile
from ghostnet.deploy.bench_config import BenchResult, BenchRow
from ghostnet.deploy.bench_report import plot_latency_vs_macs
from ghostnet.train.plots import plot_confusion, plot_curves
from ghostnet.viz import plot_profiles
out = Path({str(tmp_path)!r})
plot_curves([{{"epoch": 1, "train_loss": 2.0, "val_top1": 10.0, "lr": 0.1}},
             {{"epoch": 2, "train_loss": 1.5, "val_top1": 20.0, "lr": 0.05}}], out / "curves.png")
plot_confusion(torch.tensor([[3, 1], [0, 4]]), ["a", "b"], out / "confusion.png")
row = BenchRow(**{{f: 1 for f in BenchRow.__dataclass_fields__}} | dict(model="m", source="ghostnet", backend="eager",
               device="cpu", mode="infer", dtype="float32"))
plot_latency_vs_macs(BenchResult(config={{}}, environment={{}}, rows=[row]), out / "bench.png")
plot_profiles([profile("resnet20_cifar", measure_memory=False)], out / "profile.png")
assert "matplotlib.pyplot" not in sys.modules, "pyplot was imported"
"""
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)
    written = sorted(p.name for p in tmp_path.iterdir())
    assert written == ["bench.png", "confusion.png", "curves.png", "profile.png"]  # nothing half-written left over
    assert all((tmp_path / name).read_bytes()[:8] == PNG_SIGNATURE for name in written)
