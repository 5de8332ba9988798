"""PaddleClas GhostNet checkpoints: read as data, renamed to our keys, and equal to PaddleClas's own network.

The fixture is PaddleClas's GhostNet (scale 0.1, 10 classes) saved by `paddle.save`, with its eval-mode logits on a
seeded batch (tests/data/make_paddle_reference.py; paddlepaddle is not needed here).
"""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from ghostnet import create_model
from ghostnet.convert.checkpoints import load_checkpoint
from ghostnet.convert.paddle import NAME_TABLE_KEY, key_table, paddle_to_ghostnet, read_pdparams
from ghostnet.errors import CheckpointError
from ghostnet.layers import ClipGate
from ghostnet.models.ghostnet import GhostNet
from ghostnet.models.zoo import PADDLE_VARIANT
from support.numerics import assert_float32_parity, corrupt_one_weight, float32_parity, stored_logits_outputs
# The local weights server, and the autouse fixture that gives each test a private cache and weights table and no
# network beyond 127.0.0.1.
from support.weights_server import assert_state_equal, isolated, random_state, serve_published, server  # noqa: F401

DATA = Path(__file__).resolve().parent / "data"
FIXTURE = DATA / "paddleclas_ghostnet_x0_1.pdparams"
REFERENCE = np.load(DATA / "paddleclas_ghostnet_x0_1_io.npz")


def fixture_model(**overrides) -> GhostNet:
    kwargs = dict(PADDLE_VARIANT, width=0.1, num_classes=10)
    kwargs.update(overrides)
    return GhostNet(**kwargs).eval()


def logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.from_numpy(REFERENCE["input"]))


def paddleclas_outputs(model: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(Paddle's stored logits, our float32 logits, our float64 logits) on the fixture's batch."""
    return stored_logits_outputs(model, REFERENCE)


def assert_same_logits_as_paddleclas(model: torch.nn.Module) -> None:
    assert_float32_parity(*paddleclas_outputs(model), what="PaddleClas's logits")


def write_pdparams(path: Path, arrays: dict) -> Path:
    with open(path, "wb") as f:
        pickle.dump(arrays, f, protocol=2)  # the protocol of the Paddle 2.x files PaddleClas released
    return path


def test_paddleclas_network_and_ours_give_the_same_logits():
    assert_same_logits_as_paddleclas(load_checkpoint(fixture_model(), FIXTURE))


def test_the_logits_check_fails_for_one_corrupted_weight():
    """The bound above can fail: 1e-3 added to one converted weight is caught (over 5x the bound).

    Not a stem weight: this random width-0.1 network passes little of its early layers' signal on (1e-3 in the
    stem moves the logits by 1e-8, under one float32 ulp of the stored logits, so no float32 comparison could see
    it); a depthwise conv of the last Ghost stage reaches them.
    """
    model = load_checkpoint(fixture_model(), FIXTURE)
    weight = corrupt_one_weight(model, conv="blocks.8.0.ghost2.cheap_operation.0")
    parity = float32_parity(*paddleclas_outputs(model))
    assert not parity.ok, f"{weight} + 1e-3 went unnoticed: {parity}"


def test_the_fixture_tells_the_paddleclas_details_apart():
    """The SE gate and the SE width change the logits, so the test above checks them (the head BN is a key)."""
    state = paddle_to_ghostnet(read_pdparams(FIXTURE))
    expected = torch.from_numpy(REFERENCE["logits"])
    hard_sigmoid = fixture_model(se_gate="hard_sigmoid")
    hard_sigmoid.load_state_dict(state)
    assert (logits(hard_sigmoid) - expected).abs().max() > 1e-3 * expected.abs().max() * 10
    with pytest.raises(CheckpointError, match="shape mismatches"):
        load_checkpoint(fixture_model(se_divisor=4), FIXTURE)
    with pytest.raises(CheckpointError, match="unexpected keys .*norm_head"):
        load_checkpoint(fixture_model(head_norm=False), FIXTURE)


def test_clip_gate_is_clip_to_unit_interval():
    x = torch.tensor([-2.0, -0.1, 0.0, 0.3, 1.0, 2.5])
    assert torch.equal(ClipGate()(x), torch.tensor([0.0, 0.0, 0.0, 0.3, 1.0, 1.0]))


def test_files_keyed_by_parameter_names_load_the_same(tmp_path):
    # Paddle stores its own structured-name -> parameter-name table in the file: rename with it, independently of
    # our key table, and the result must load to the same network.
    with open(FIXTURE, "rb") as f:
        raw = pickle.load(f)  # our own fixture, trusted
    names = raw.pop(NAME_TABLE_KEY)
    renamed = {names[k]: v for k, v in raw.items()}
    assert set(renamed) != set(raw)
    model = load_checkpoint(fixture_model(), write_pdparams(tmp_path / "by_param_name.pdparams", renamed))
    assert_same_logits_as_paddleclas(model)


def test_every_key_of_the_file_is_in_the_key_table():
    with open(FIXTURE, "rb") as f:
        raw = pickle.load(f)
    names = raw.pop(NAME_TABLE_KEY)
    table = {structured: param for _, structured, param in key_table()}
    assert {k: table.get(k) for k in raw} == {k: names[k] for k in raw}


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pdparams_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "ran"
    path = write_pdparams(tmp_path / "evil.pdparams", {"conv1._conv.weight": _Exploit(marker)})
    with pytest.raises(CheckpointError, match=r"evil.pdparams: not a readable .pdparams file .*refusing to load "
                                              r"(posix|nt)\.system"):
        load_checkpoint(fixture_model(), path)
    assert not marker.exists()


def test_bad_files_are_clear_errors(tmp_path):
    with pytest.raises(CheckpointError, match="not a readable .pdparams file"):
        load_checkpoint(fixture_model(), write_bytes(tmp_path / "junk.pdparams", b"not a pickle"))
    with pytest.raises(CheckpointError, match="expected a dict of arrays, got list"):
        load_checkpoint(fixture_model(), write_pdparams(tmp_path / "list.pdparams", [np.zeros(3)]))
    arrays = dict(read_pdparams(FIXTURE))
    arrays = {k: v.numpy() for k, v in arrays.items()}
    arrays["resnet.layer1.weight"] = np.zeros(3, dtype="float32")
    with pytest.raises(CheckpointError, match=r"keys that are not PaddleClas GhostNet parameters \(1\): "
                                              r"resnet.layer1.weight"):
        load_checkpoint(fixture_model(), write_pdparams(tmp_path / "extra.pdparams", arrays))


def write_bytes(path: Path, body: bytes) -> Path:
    path.write_bytes(body)
    return path


def test_the_official_model_refuses_a_paddle_file_and_names_the_models_that_fit():
    with pytest.raises(CheckpointError, match=r"a PaddleClas GhostNet checkpoint: it fits ghostnet_050_paddle, "
                                              r"ghostnet_100_paddle, ghostnet_130_paddle"):
        load_checkpoint(GhostNet(width=0.1, num_classes=10), FIXTURE)


def test_features_only_model_takes_the_body_of_a_paddle_file():
    full = load_checkpoint(fixture_model(), FIXTURE)
    taps = load_checkpoint(fixture_model(features_only=True, out_indices=(1, 3)), FIXTURE)
    x = torch.from_numpy(REFERENCE["input"])
    with torch.no_grad():
        for got, want in zip(taps(x), full.forward_intermediates(x, indices=(1, 3), intermediates_only=True)):
            torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize("name, paddleclas_params", [
    ("ghostnet_050_paddle", 2.6e6), ("ghostnet_100_paddle", 5.2e6), ("ghostnet_130_paddle", 7.3e6)])
def test_registered_paddle_models_have_paddleclas_sizes(name, paddleclas_params):
    # PaddleClas's table (Mobile.md) gives parameters in millions to one decimal (7.35M is listed as 7.3).
    params = sum(p.numel() for p in create_model(name).parameters())
    assert abs(params - paddleclas_params) <= 0.01 * paddleclas_params
    assert create_model(name).pretrained_cfg["interpolation"] == "bilinear"


def to_paddle_arrays(state: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """Our state dict in PaddleClas's structured names and layouts (the inverse of paddle_to_ghostnet)."""
    out = {}
    for ours, structured, _ in key_table():
        if ours in state:
            value = state[ours]
            if ours.startswith("classifier.") and value.ndim == 2:
                value = value.t()
            elif ".se.conv_" in ours and ours.endswith(".weight"):
                value = value[:, :, 0, 0].t()
            out[structured] = value.numpy().copy()
    return out


def test_pretrained_paddle_weights_download_and_convert(server):  # noqa: F811
    """create_model("ghostnet_050_paddle", pretrained=True) through the weights table, served from 127.0.0.1."""
    state = random_state("ghostnet_050_paddle", 3)
    body = pickle.dumps(to_paddle_arrays(state), protocol=2)
    assert serve_published(server, "ghostnet_050_paddle", "/GhostNet_x0_5_pretrained.pdparams", body).tag == "paddle"
    model = create_model("ghostnet_050_paddle", pretrained=True)
    assert_state_equal(model, state, skip=("num_batches_tracked",))
    assert server.hits == ["/GhostNet_x0_5_pretrained.pdparams"]
