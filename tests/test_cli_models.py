"""The `ghostnet` command's model listing and info, and its error handling."""
from __future__ import annotations

import subprocess
import sys

import pytest

from ghostnet.cli import main


def test_models_lists_the_registry(capsys):
    assert main(["models", "ghostnetv3*"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in out] == ["ghostnetv3_050", "ghostnetv3_100", "ghostnetv3_130",
                                                 "ghostnetv3_160"]


def test_info_shows_params_and_taps(capsys):
    assert main(["info", "ghostnet_100"]) == 0
    out = capsys.readouterr().out
    assert "ghostnet_100: 5.18M parameters" in out
    assert "tap blocks.6: 112 channels at stride 16" in out


def test_unknown_model_is_a_one_line_error(capsys):
    assert main(["info", "ghostnet_999"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ghostnet info: error: unknown model 'ghostnet_999'") and "\n" not in err


@pytest.mark.slow
def test_python_dash_m_entry_point():
    out = subprocess.run([sys.executable, "-m", "ghostnet", "--version"], capture_output=True, text=True, check=True)
    import ghostnet

    assert out.stdout.strip() == ghostnet.__version__
