"""Bad data found early (`ghostnet data check`) or skipped by choice (`skip_bad_images`): the unreadable files are
listed, counted and named; a run skips at most as many as it was allowed."""
from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ghostnet.data import BadImageCounter, BadImageLimitError, CorruptImageError, SkippedSample, check_data
from ghostnet.train import make_config, train
from support.training import tiny_config, write_image_folder, write_npz_data

pytestmark = pytest.mark.usefixtures("one_thread")

CLI_ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _truncated_jpeg(path: Path) -> Path:
    from PIL import Image

    buffer = io.BytesIO()
    pixels = np.random.default_rng(0).integers(0, 255, (20, 20, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(buffer, "JPEG")
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    return path


def _bad_tree(tmp_path: Path) -> tuple[Path, list[Path], Path]:
    """Two classes of 5 training images plus 2 unreadable ones (12: three batches of 4, none dropped), and 2 good
    validation images per class plus 1 unreadable one."""
    root = write_image_folder(tmp_path / "data", classes=("cat", "dog"), per_class=5)
    bad_train = [_truncated_jpeg(root / "train" / "cat" / "cut.jpg"), root / "train" / "dog" / "empty.png"]
    bad_train[1].write_bytes(b"")
    bad_val = root / "val" / "dog" / "broken.png"
    bad_val.write_bytes(b"\x89PNG\r\n\x1a\n not a png")
    return root, bad_train, bad_val


# ---------------------------------------------------------------------------------------------- ghostnet data check
def test_check_lists_truncated_and_empty_images_and_counts_classes(tmp_path):
    root, bad_train, bad_val = _bad_tree(tmp_path)
    (root / "train" / "owl").mkdir()  # an empty class, and one that val lacks
    (root / "val" / "dog" / "notes.txt").write_text("not an image")
    report = check_data(root, workers=2)
    assert not report.ok
    assert {p.path: p.reason.split(" (")[0] for p in report.unreadable} == {
        str(bad_train[0]): "cannot read image", str(bad_train[1]): "cannot read image",
        str(bad_val): "cannot read image"}
    assert "Truncated" in next(p.reason for p in report.unreadable if p.path == str(bad_train[0]))
    train, val = report.splits
    assert train.classes == {"cat": 6, "dog": 6, "owl": 0} and val.classes == {"cat": 2, "dog": 3}
    assert val.ignored == [str(root / "val" / "dog" / "notes.txt")]
    warnings = "\n".join(report.warnings)
    assert "train: no images in class(es) owl" in warnings and "only in train: owl" in warnings
    assert "1 file(s) the loader does not read" in warnings
    assert check_data(root, workers=0).to_dict() == report.to_dict()  # decoding in workers changes nothing


def test_check_flags_tiny_images(tmp_path):
    from PIL import Image

    root = write_image_folder(tmp_path / "data", classes=("a", "b"), per_class=2)
    Image.new("RGB", (1, 1)).save(root / "train" / "a" / "pixel.png")
    report = check_data(root, min_size=8)
    assert report.ok and [p.path for p in report.splits[0].small] == [str(root / "train" / "a" / "pixel.png")]
    assert "1 image(s) with a side under 8 pixels" in report.warnings[0]
    assert check_data(root, min_size=1).warnings == []


@pytest.mark.slow
def test_data_check_command_exit_status_table_and_json(tmp_path, capsys):
    root, bad_train, bad_val = _bad_tree(tmp_path)
    out = tmp_path / "reports" / "check.json"
    result = subprocess.run([sys.executable, "-m", "ghostnet", "data", "check", str(root), "--json", str(out),
                             "--workers", "2", "--no-progress"], capture_output=True, text=True, timeout=300,
                            env=CLI_ENV)
    assert result.returncode == 1, result.stderr[-2000:]
    assert result.stderr == "", result.stderr  # no progress bar, no traceback
    for path in (*bad_train, bad_val):
        assert re.search(rf"^  {re.escape(str(path))}: cannot read image", result.stdout, re.M), result.stdout
    assert re.search(r"^cat +6 +2$", result.stdout, re.M) and re.search(r"^dog +6 +3$", result.stdout, re.M)
    assert result.stdout.strip().splitlines()[-1].startswith("3 unreadable files")
    report = json.loads(out.read_text())
    assert report["ok"] is False and report["unreadable"] == 3
    assert [s["classes"] for s in report["splits"]] == [{"cat": 6, "dog": 6}, {"cat": 2, "dog": 3}]
    assert sorted(p["path"] for s in report["splits"] for p in s["unreadable"]) == sorted(
        map(str, (*bad_train, bad_val)))
    assert [p.name for p in out.parent.iterdir()] == ["check.json"]  # written atomically: no temporary left

    from ghostnet.cli import main

    for path in (*bad_train, bad_val):
        path.unlink()
    assert main(["data", "check", str(root), "--workers", "0"]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip().splitlines()[-1] == "all 14 images readable"
    assert "reading train" in captured.err  # the progress bar, on stderr
    assert main(["data", "check", str(tmp_path / "absent")]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"ghostnet data: error: {tmp_path / 'absent'}: no such data folder"]


def test_check_of_npz_shards(tmp_path):
    root = write_npz_data(tmp_path / "npz", n_train=(8, 4), n_val=4)
    report = check_data(root)
    assert report.ok and [s.kind for s in report.splits] == ["arrays", "arrays"]
    assert report.splits[0].classes == {"class0": 3, "class1": 3, "class2": 3, "class3": 3}
    np.savez(root / "train_2.npz", images=np.zeros((2, 8, 8, 3), np.uint8), labels=np.array([0, 9]))
    (root / "train_3.npz").write_bytes(b"not a zip")
    np.savez(root / "train_4.npz", images=np.zeros((2, 16, 16, 3), np.uint8), labels=np.array([0, 9]))
    reasons = {Path(p.path).name: p.reason for p in check_data(root).unreadable}
    assert reasons.keys() == {"train_2.npz", "train_3.npz", "train_4.npz"}
    assert "8x8 but train_0.npz's are 16x16" in reasons["train_2.npz"]
    assert "not a readable .npz file" in reasons["train_3.npz"]
    assert "labels go up to 9 but classes.txt names 4 classes" in reasons["train_4.npz"]


def test_check_of_what_is_not_a_data_set(tmp_path):
    assert "torchvision" in check_data("cifar10").note and check_data("cifar10").ok
    (tmp_path / "loose.png").write_bytes(b"")
    with pytest.raises(ValueError, match="not a data set"):
        check_data(tmp_path)
    with pytest.raises(FileNotFoundError, match="no such data folder"):
        check_data(tmp_path / "absent")


# ---------------------------------------------------------------------------------------------- --skip-bad-images
def _rows(output: Path) -> list[dict]:
    return [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("workers, epochs", [(0, 2), (2, 1)])
def test_training_skips_and_counts_up_to_n_bad_images(tmp_path, capsys, workers, epochs):
    root, bad_train, bad_val = _bad_tree(tmp_path)
    values = tiny_config(root, tmp_path / "run", epochs=epochs, batch_size=4, workers=workers, skip_bad_images=3)
    train(make_config(values))
    rows = _rows(tmp_path / "run")
    # Every epoch leaves out both bad training images; the run met 3 distinct bad files (the val one too).
    assert [(r["bad_images"], r["bad_images_total"]) for r in rows] == [(2, 3)] * epochs
    logged = re.findall(r"skipped unreadable image \(\d of at most 3\): (.*?): cannot read image",
                        capsys.readouterr().err)
    assert sorted(logged) == sorted(map(str, (*bad_train, bad_val)))  # each once, though met every epoch


def test_more_bad_images_than_allowed_stops_the_run_naming_the_last(tmp_path, capsys):
    root, bad_train, _ = _bad_tree(tmp_path)
    values = tiny_config(root, tmp_path / "run", epochs=1, batch_size=4, workers=2, skip_bad_images=1)
    with pytest.raises(BadImageLimitError) as caught:
        train(make_config(values))
    message = str(caught.value)
    first = re.search(r"skipped unreadable image \(1 of at most 1\): (.*?): ", capsys.readouterr().err).group(1)
    last = next(str(p) for p in bad_train if str(p) != first)
    assert message.startswith(f"2 unreadable images seen, more than the 1 that --skip-bad-images allows; the last: "
                              f"{last}: cannot read image") and "\n" not in message


def test_default_stops_at_the_first_bad_image_naming_it(tmp_path):
    from ghostnet.cli import user_message

    root = write_image_folder(tmp_path / "data", classes=("cat", "dog"), per_class=4)
    bad = _truncated_jpeg(root / "train" / "dog" / "cut.jpg")
    values = tiny_config(root, tmp_path / "run", epochs=1, batch_size=3, workers=2)
    assert make_config(values).skip_bad_images == 0
    with pytest.raises(CorruptImageError) as caught:
        train(make_config(values))
    assert user_message(caught.value) == f"{bad}: cannot read image (OSError: Truncated File Read)"
    with pytest.raises(ValueError, match="skip_bad_images must be >= 0"):
        make_config({**values, "skip_bad_images": -1})


def test_counts_over_processes_are_the_union_of_their_files():
    ranks = [BadImageCounter(3, log=lambda line: None), BadImageCounter(2, log=lambda line: None)]
    ranks[0].count([SkippedSample("a", "a: bad"), SkippedSample("b", "b: bad")])
    ranks[1].count([SkippedSample("b", "b: bad")])
    ranks[1].count([SkippedSample("c", "c: bad")], training=False)  # a val image: in the total, not the epoch's
    assert [len(r.found) for r in ranks] == [2, 2]  # each process alone is within its limit
    state = [(r.in_epoch, dict(r.found)) for r in ranks]
    assert ranks[0].end_epoch(lambda obj: state) == {"bad_images": 3, "bad_images_total": 3}
    assert ranks[0].in_epoch == 0 and list(ranks[0].found) == ["a", "b", "c"]
    with pytest.raises(BadImageLimitError, match="3 unreadable images seen, more than the 2 .* the last: c: bad"):
        ranks[1].end_epoch(lambda obj: state)  # the union is over this process's limit
