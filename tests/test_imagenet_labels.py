"""The ImageNet-1k class names shipped as package data (used by `predict` when a checkpoint has no labels)."""
from __future__ import annotations

import tomllib
from pathlib import Path

from ghostnet.hub import imagenet_classes

REPO = Path(__file__).resolve().parents[1]


def test_thousand_unique_names_in_the_standard_order():
    names = imagenet_classes()
    assert len(names) == 1000 and len(set(names)) == 1000
    assert names[0] == "tench" and names[-1] == "toilet tissue"
    # Spot checks of the standard index order (class 1 goldfish, 207 golden retriever, 999 toilet tissue).
    assert names[1] == "goldfish" and names[207] == "golden retriever"
    assert all(name == name.strip() and name for name in names)


def test_same_list_as_torchvision():
    import pytest

    meta = pytest.importorskip("torchvision.models._meta")
    assert imagenet_classes() == list(meta._IMAGENET_CATEGORIES)


def test_callers_get_their_own_copy():
    names = imagenet_classes()
    names[0] = "changed"
    assert imagenet_classes()[0] == "tench"


def test_the_file_is_declared_as_package_data():
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["ghostnet"]
    assert "assets/*.txt" in patterns
    assert (REPO / "src" / "ghostnet" / "assets" / "imagenet_classes.txt").is_file()
