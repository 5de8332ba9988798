"""`ghostnet profile`: the printed table, JSON, CSV and PNG outputs, comparisons and clear errors."""
from __future__ import annotations

import csv
import json

import pytest

from ghostnet.analysis import profile
from ghostnet.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SMALL = ["--input-size", "64", "64"]


def test_table_json_csv_and_plot(tmp_path, capsys) -> None:
    out_json, out_csv, out_png = tmp_path / "p.json", tmp_path / "p.csv", tmp_path / "plots" / "p.png"
    rc = main(["profile", "ghostnet_050", *SMALL, "--batch-size", "2", "--layers", "--ghost",
               "--json", str(out_json), "--csv", str(out_csv), "--plot", str(out_png)])
    assert rc == 0
    expected = profile("ghostnet_050", (3, 64, 64), batch_size=2, measure_memory=False)
    text = capsys.readouterr().out
    lines = text.splitlines()
    assert lines[0].startswith("ghostnet_050: input 2x3x64x64, float32, cpu")
    for stage in ("stem", "blocks.0", "blocks.9", "head", "total"):
        assert any(line.startswith(stage + " ") for line in lines), stage
    assert "blocks.1.0.ghost1.primary_conv.0" in text  # --layers
    assert "paper r" in text and "measured" in text  # --ghost, and the measured memory line

    data = json.loads(out_json.read_text())
    p, = data["profiles"]
    assert (p["params"], p["macs"], p["flops"]) == (expected.params, expected.macs, expected.flops)
    assert p["input_size"] == [3, 64, 64] and p["batch_size"] == 2
    assert len(p["ghost_modules"]) == 32 and p["ghost_summary"]["formula_macs"] == p["ghost_summary"]["counted_macs"]
    assert p["memory"]["peak_measured_bytes"] > 0

    with open(out_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(expected.layers)
    assert sum(int(r["macs"]) for r in rows) == expected.macs
    assert sum(int(r["params"]) for r in rows) == expected.params
    assert rows[0]["path"] == "conv_stem" and rows[0]["output_shape"] == "2x8x32x32"

    assert out_png.read_bytes()[:8] == PNG_SIGNATURE
    assert not list(tmp_path.rglob("*.tmp"))  # atomic writes leave no temporary file behind


def test_compare_with_an_importable_builder(tmp_path, capsys) -> None:
    out_json = tmp_path / "both.json"
    rc = main(["profile", "ghostnet_100", "--compare", "torchvision.models:mobilenet_v3_small", *SMALL,
               "--no-measure", "--json", str(out_json)])
    assert rc == 0
    text = capsys.readouterr().out
    first, second = json.loads(out_json.read_text())["profiles"]
    assert first["model"] == "ghostnet_100" and second["model"] == "torchvision.models:mobilenet_v3_small"
    assert second["input_size"] == [3, 64, 64] and not second["ghost_modules"]
    comparison = [line for line in text.splitlines() if line.startswith("MACs ")]
    assert comparison and f"{second['macs'] / first['macs']:.2f}" in comparison[-1]


@pytest.mark.parametrize("argv, message", [
    (["profile", "ghostnet_999"], "unknown model 'ghostnet_999'"),
    (["profile", "ghostnet_050", "--input-size", "16", "16"], "too small"),
    (["profile", "ghostnet_050", "--input-size", "0", "64"], "three positive integers"),
    (["profile", "ghostnet_050", *SMALL, "--batch-size", "0"], "batch_size must be a positive integer"),
    (["profile", "no_such_module:build"], "cannot import 'no_such_module'"),
    (["profile", "torchvision.models:no_such_builder"], "does not name a callable"),
    (["profile", "ghostnet_050", *SMALL, "--plot", "costs.jpg"], "ending in .png"),
])
def test_bad_input_gives_one_line_error(argv, message, tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("ghostnet profile: error:") and message in err
    assert not list(tmp_path.iterdir())  # nothing written


def test_profile_specs_is_the_command_as_a_library_call(tmp_path) -> None:
    from ghostnet.analysis import profile_specs

    out_json, out_csv = tmp_path / "both.json", tmp_path / "both.csv"
    run = profile_specs(["ghostnet_050", "resnet20_cifar"], batch_size=2, measure_memory=False, json_path=out_json,
                        csv_path=out_csv)
    first, second = run.profiles
    assert (first.input_size, second.input_size) == ((3, 224, 224), (3, 224, 224))  # the first model's size for both
    assert first.macs == profile("ghostnet_050", (3, 224, 224), batch_size=2, measure_memory=False).macs
    assert run.training == [] and [p["model"] for p in json.loads(out_json.read_text())["profiles"]] == [
        "ghostnet_050", "resnet20_cifar"]
    assert out_csv.read_text().count("\nresnet20_cifar,") == len(second.layers)
    run = profile_specs(["resnet20_cifar"], image_size=(16, 24), batch_size=2, measure_memory=False, train=True)
    assert run.profiles[0].input_size == (3, 16, 24) and run.training[0].input_size == (3, 16, 24)
    with pytest.raises(ValueError, match="grad_checkpointing goes with train"):
        profile_specs(["resnet20_cifar"], grad_checkpointing=True)
