"""benchmarks/profile_ort_threads.py's table: the per-kind rows and the floor row "convolutions and Gemm", which
docs/benchmarks.md ("How far the graph can go") sets against another model's "all nodes". Synthetic profiles, no
onnxruntime run."""
import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "profile_ort_threads.py"


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("profile_ort_threads", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_node_kinds(script):
    assert script.node_kind("Conv", [[1, 16, 56, 56], [16, 1, 3, 3]], [[1, 16, 56, 56]]) == "depthwise conv @56"
    assert script.node_kind("Conv", [[1, 16, 7, 7], [16, 1, 1, 5]], [[1, 16, 7, 7]]) == "DFC depthwise 1x5 @7"
    assert script.node_kind("Conv", [[1, 16, 14, 14], [32, 16, 1, 1]], [[1, 32, 14, 14]]) == "1x1 conv @14"
    assert script.node_kind("Conv", [[1, 3, 224, 224], [16, 3, 3, 3]], [[1, 16, 112, 112]]) == "kxk conv @112"
    assert script.node_kind("Concat", [], []) == "Concat"


def test_floor_row_sums_only_convolutions_and_gemm(script):
    by_kind = {"1x1 conv @14": [3, 300.0], "depthwise conv @7": [2, 50.0], "DFC depthwise 5x1 @3": [1, 7.0],
               "kxk conv @112": [1, 100.0], "Gemm": [1, 40.0], "Concat": [4, 80.0], "Mul": [2, 20.0],
               "ReorderOutput": [5, 30.0], "Upsample": [1, 9.0]}
    rows = script.table({("m", 1): (by_kind, 900.0)}, ["m"], [1])
    cells = {row.split(" | ")[0].lstrip("| "): row.rstrip(" |").split(" | ")[1:] for row in rows[2:]}
    assert cells[script.ARITHMETIC] == ["8", "497"]  # 300 + 50 + 7 + 100 + 40
    assert cells[script.ALL_NODES] == ["20", "636"]
    assert cells[script.WHOLE_RUN] == ["", "900"]
    assert cells["Concat"] == ["4", "80"]
    assert not any(script.is_arithmetic(kind) for kind in ("Concat", "Mul", "ReorderOutput", "Upsample", "Resize"))
