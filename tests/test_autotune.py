"""`ghostnet export --format auto` (deploy/autotune.py): every candidate recorded, the choice cached per machine
and reused, and a candidate whose output is wrong never chosen however fast it is.

No timing is asserted: which real candidate wins depends on the machine. The wrong candidate here is made the
fastest by construction (its timed call does nothing), so only the check can keep it from winning.
"""
from __future__ import annotations

import json

import pytest
import torch

from ghostnet.cli import main as cli_main
from ghostnet.deploy import autotune
from ghostnet.deploy.onnx_io import export_onnx, onnx_session, run_onnx
from ghostnet.deploy.runtimes import Runtime, Session, register_runtime, unregister_runtime

pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.usefixtures("one_thread")

FAST = dict(threads=1, image_size=32, rounds=1, reps=2)


@pytest.fixture(autouse=True)
def empty_cache(tmp_path, monkeypatch):
    """Each test starts from an empty cache of choices."""
    from ghostnet.tuning import CACHE_ENV

    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))


class _OffByOne(Session):
    """An ONNX file whose outputs come back shifted by `offset` (a broken runtime), with a timed call that does
    nothing, so that it would win any race it enters."""

    def __init__(self, path, offset: float) -> None:
        self.session, self.offset = onnx_session(path, threads=1), offset

    def __call__(self, x):
        return run_onnx(self.session, x) + self.offset

    def bind(self, x):
        return lambda: None


def _fake_runtime(name: str, offset: float) -> Runtime:
    return Runtime(name=name, format=name, suffix=f".{name}", load=lambda path, threads=None: _OffByOne(path, offset),
                   export=lambda model, path, x, dynamic_batch=True: export_onnx(model, path, x,
                                                                                  dynamic_batch=dynamic_batch))


@pytest.fixture
def broken_runtime():
    """A registered runtime that is fast and wrong (outputs off by 1e-3)."""
    runtime = register_runtime(_fake_runtime("fast-but-wrong", 1e-3))
    yield runtime
    unregister_runtime(runtime.name)


def test_a_wrong_candidate_is_never_chosen(tmp_path, broken_runtime):
    result = autotune.export_fastest("ghostnet_050", tmp_path / "g", runtimes=["onnxruntime", broken_runtime.name],
                                     **FAST)
    assert result.record["runtime"] == "onnxruntime" and result.path == tmp_path / "g.onnx"
    wrong = [c for c in result.record["candidates"] if c["runtime"] == broken_runtime.name]
    assert wrong and all(c["error"].startswith("ValueError: output is not the model's") for c in wrong)
    assert all(c["latency_ms"] is None for c in wrong)


def test_an_exact_fast_candidate_wins(tmp_path):
    """The other side of the check: the same fast runtime with exact outputs does win (so the test above fails
    if the check is dropped)."""
    register_runtime(_fake_runtime("fast-and-right", 0.0))
    try:
        result = autotune.export_fastest("ghostnet_050", tmp_path / "g", runtimes=["onnxruntime", "fast-and-right"],
                                         **FAST)
    finally:
        unregister_runtime("fast-and-right")
    assert result.record["runtime"] == "fast-and-right" and result.path.name == "g.fast-and-right"


def test_record_lists_every_candidate_and_the_machine(tmp_path):
    result = autotune.export_fastest("ghostnet_050", tmp_path / "g", runtimes=["onnxruntime"], **FAST)
    record = json.loads((tmp_path / "g.json").read_text())
    assert record == json.loads(json.dumps(result.record)) and not result.cached
    assert {"runtime", "file", "latency_ms", "threads", "machine", "candidates"} <= set(record)
    assert record["machine"]["cpu"] and record["machine"]["isa"] and record["machine"]["runtimes"]["onnxruntime"]
    stage1 = [c for c in record["candidates"] if c["stage"] == 1]
    structures = autotune.candidate_structures(*_model_and_input())
    assert len(stage1) == len(structures) >= 4  # plain, split, aligned to 8 and 16, single-path
    assert {c["describe"] for c in stage1} == {f.describe() for f in
                                               (s.__class__(**{**s.to_dict(), "options": (),
                                                               "dynamic_batch": False}) for s in structures)}
    assert all(c["latency_ms"] > 0 and c["error"] is None for c in record["candidates"])
    # at one thread the winner is the last stage's lowest CPU time per call (steady on a shared machine)
    last = [c for c in record["candidates"] if c["stage"] == max(d["stage"] for d in record["candidates"])]
    winner = min(last, key=lambda c: c["cpu_ms"])
    assert (winner["latency_ms"], winner["form"]) == (record["latency_ms"], record["form"])
    assert result.path.is_file() and record["parity"].startswith("error")


def _model_and_input():
    import ghostnet

    return ghostnet.create_model("ghostnet_050").eval(), torch.randn(1, 3, 32, 32)


def test_a_cached_choice_is_reused_without_measuring(tmp_path, monkeypatch):
    first = autotune.export_fastest("ghostnet_050", tmp_path / "a", runtimes=["onnxruntime"], **FAST)

    def no_search(*args, **kwargs):
        raise AssertionError("measured again although the choice is cached")

    monkeypatch.setattr(autotune, "_search", no_search)
    second = autotune.export_fastest("ghostnet_050", tmp_path / "b", runtimes=["onnxruntime"], **FAST)
    assert second.cached and second.record["form"] == first.record["form"]
    assert second.record["candidates"] == first.record["candidates"] and second.path.is_file()
    with pytest.raises(AssertionError, match="measured again"):  # --retune measures whatever the cache holds
        autotune.export_fastest("ghostnet_050", tmp_path / "c", runtimes=["onnxruntime"], retune=True, **FAST)
    # another thread count is another key
    with pytest.raises(AssertionError, match="measured again"):
        autotune.export_fastest("ghostnet_050", tmp_path / "d", runtimes=["onnxruntime"],
                                **{**FAST, "threads": 2})


def test_a_cached_choice_that_fails_now_is_measured_again(tmp_path, monkeypatch):
    """What passed when it was cached may not pass now (a converter that fails in this process, a changed package):
    the choice is measured again instead of the export failing."""
    autotune.export_fastest("ghostnet_050", tmp_path / "a", runtimes=["onnxruntime"], **FAST)
    real_export, calls = autotune._Trial.export, []

    def export_fails_once(self, candidate, path):
        calls.append(path)
        if len(calls) == 1:
            raise RuntimeError("Tracing failed sanity checks!\nGraphs differed across invocations")
        return real_export(self, candidate, path)

    monkeypatch.setattr(autotune._Trial, "export", export_fails_once)
    messages = []
    result = autotune.export_fastest("ghostnet_050", tmp_path / "b", runtimes=["onnxruntime"], progress=messages.append,
                                     **FAST)
    assert not result.cached and result.path.is_file() and len(calls) > 2
    assert any("cached choice failed here (RuntimeError: Tracing failed sanity checks!); measuring again" in m
               for m in messages)


def test_when_every_candidate_fails_the_error_says_why(tmp_path, monkeypatch):
    """No candidate exported (a full disk, say): one clear error with the candidates' reasons, and no file."""
    def export_fails(self, candidate, path):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(autotune._Trial, "export", export_fails)
    with pytest.raises(ValueError, match=r"no candidate form of ghostnet_050 exported and passed its check here "
                                         r"\(onnxruntime .*: OSError: \[Errno 28\] No space left on device"):
        autotune.export_fastest("ghostnet_050", tmp_path / "g", runtimes=["onnxruntime"], **FAST)
    assert not (tmp_path / "g.onnx").exists() and not (tmp_path / "g.json").exists()


def test_cli_format_auto(tmp_path, capsys):
    assert cli_main(["export", "ghostnet_050", "--format", "auto", "--image-size", "32", "--runtimes", "onnxruntime",
                     "-o", str(tmp_path / "g")]) == 0
    out = capsys.readouterr().out
    assert "stage 1:" in out and f"wrote {tmp_path / 'g.onnx'} (onnxruntime" in out
    assert (tmp_path / "g.json").is_file()
    assert cli_main(["export", "ghostnet_050", "--format", "auto", "--align-channels", "16",
                     "-o", str(tmp_path / "h")]) == 2
    assert "--format auto chooses the form itself" in capsys.readouterr().err


def test_auto_refuses_what_it_cannot_choose_from(tmp_path):
    with pytest.raises(ValueError, match="runs in this process"):
        autotune.export_fastest("ghostnet_050", tmp_path / "g", runtimes=["eager"], **FAST)
    with pytest.raises(ValueError, match="unknown runtime"):
        autotune.export_fastest("ghostnet_050", tmp_path / "g", runtimes=["tensorrt"], **FAST)
    with pytest.raises(ValueError, match="threads must be >= 1"):
        autotune.export_fastest("ghostnet_050", tmp_path / "g", **{**FAST, "threads": 0})
    assert not [p for p in tmp_path.iterdir() if p.name != "cache"]
