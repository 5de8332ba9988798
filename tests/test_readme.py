"""The README's Quick start runs as written on a fresh machine: no file the user lacks, nothing downloaded."""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def quick_start_blocks() -> dict[str, list[str]]:
    """The fenced code blocks of the README's "Quick start" section, by language."""
    text = README.read_text(encoding="utf-8")
    section = re.search(r"^## Quick start.*?$(.*?)^## ", text, flags=re.S | re.M)
    assert section, "README.md has no '## Quick start' section"
    blocks: dict[str, list[str]] = {}
    for lang, body in re.findall(r"^```(\w+)\n(.*?)^```", section.group(1), flags=re.S | re.M):
        blocks.setdefault(lang, []).append(body)
    assert {"bash", "python"} <= blocks.keys(), blocks.keys()
    return blocks


def _offline_env() -> dict[str, str]:
    # Offline: a Quick start that reached for a download would fail here instead of passing on a connected machine.
    return {**os.environ, "GHOSTNET_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


@pytest.mark.slow
def test_quick_start_python_runs(tmp_path):
    code = "\n".join(quick_start_blocks()["python"])
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                            timeout=600, env=_offline_env())
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.slow
def test_quick_start_commands_run(tmp_path):
    for block in quick_start_blocks()["bash"]:
        for line in block.splitlines():
            command = line.split("#", 1)[0].strip()
            if not command:
                continue
            argv = shlex.split(command)
            assert argv[0] == "ghostnet", command
            result = subprocess.run([sys.executable, "-m", "ghostnet", *argv[1:]], cwd=tmp_path,
                                    capture_output=True, text=True, timeout=600, env=_offline_env())
            assert result.returncode == 0, (command, result.stderr[-3000:])
            assert result.stdout.strip(), command
