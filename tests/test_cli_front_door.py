"""What a new user meets: every failure they can cause is one line naming the path/flag/classes, with a non-zero exit
status and no traceback; Ctrl-C in training says how to resume (and the resume is exact); files are readable as the
umask allows; short runs train; one model-spec grammar in every command. Each test runs the real command in a
subprocess, as a user would."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from support.common import single_thread
from support.training import tiny_config, write_image_folder, write_npz_data

CLI = [sys.executable, "-m", "ghostnet"]


#: One intra-op thread per command: beside the pytest process on 2 cores, a second thread only adds hand-offs.
CLI_ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 600, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, cwd=cwd, timeout=timeout,
                          env={**CLI_ENV, **env})


def assert_one_line_error(result: subprocess.CompletedProcess, *needles: str, status: int = 2) -> str:
    """Exit `status`, no traceback, and a last stderr line that names every needle."""
    assert result.returncode == status, (result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    line = result.stderr.strip().splitlines()[-1]
    for needle in needles:
        assert needle in line, (needle, line)
    return line


@pytest.fixture
def not_a_folder(tmp_path) -> Path:
    """A path whose parent is a file: unwritable even for root (CI runs as root, where chmod 555 is no barrier)."""
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a folder")
    return blocker


# ---------------------------------------------------------------------------------------------- unwritable outputs


@pytest.mark.slow
@pytest.mark.parametrize("command", [
    ["profile", "ghostnet_050", "--plot", "{out}/cost.png"],
    ["profile", "ghostnet_050", "--json", "{out}/cost.json"],
    ["export", "ghostnet_050", "-o", "{out}/g.onnx"],
    ["bench", "ghostnet_050", "--peers", "", "--out-dir", "{out}/bench"],
    ["convert", "mindcv", "--model", "ghostnet_050", "-o", "{out}/g.safetensors"],
])
def test_unwritable_output_is_one_line_before_any_work(command, not_a_folder):
    out = str(not_a_folder / "sub")
    result = run_cli(*[part.format(out=out) for part in command])
    assert_one_line_error(result, str(not_a_folder))
    assert result.stdout == ""  # refused before the work: no profile table, no export, no download


@pytest.mark.slow
def test_unwritable_train_output_and_eval_json(tmp_path, not_a_folder):
    data = write_npz_data(tmp_path / "data")
    result = run_cli("train", "--data", str(data), "--output", str(not_a_folder / "run"))
    assert_one_line_error(result, "--output", str(not_a_folder))
    checkpoint = _tiny_checkpoint(tmp_path, data)
    result = run_cli("eval", "--checkpoint", str(checkpoint), "--data", str(data), "--json",
                     str(not_a_folder / "m.json"))
    assert_one_line_error(result, "--json", str(not_a_folder))
    assert "top-1" not in result.stdout


def _tiny_checkpoint(tmp_path: Path, data: Path) -> Path:
    from ghostnet.train import train
    from ghostnet.train.config import make_config

    out = tmp_path / "tiny"
    if not (out / "last.safetensors").is_file():
        train(make_config(tiny_config(data, out, epochs=1)))
    return out / "last.safetensors"


# ---------------------------------------------------------------------------------------------- Ctrl-C and pipes


#: `ghostnet train` in a child process that, after saving the checkpoint of global step N, writes a marker file and
#: waits until SIGINT arrives: the pause lives in the test, not in the package, and makes the Ctrl-C test independent
#: of timing (the run cannot end before the signal, however slow or loaded the machine).
PAUSE_AFTER_SAVE = """
import sys, time
from pathlib import Path
import ghostnet.train.engine as engine
from ghostnet.cli import main

marker, pause_at, argv = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
save = engine._save

def save_then_wait(run, path):
    save(run, path)
    if run.state.progress.global_step == pause_at:
        marker.write_text(str(path))
        end = time.monotonic() + 600
        while time.monotonic() < end:  # SIGINT raises KeyboardInterrupt out of the sleep
            time.sleep(0.05)
        sys.exit("no SIGINT came")

engine._save = save_then_wait
sys.exit(main(argv))
"""


def _sigint_at_default() -> None:
    """SIGINT at its default in the child, as in a command typed at a terminal. A test run started in the background
    (`pytest &` in a script) ignores SIGINT, its children inherit that, and Python then installs no KeyboardInterrupt
    handler: the run would never see the signal (before the pause below, it ran to its end and exited 0)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.slow
def test_ctrl_c_in_training_says_how_to_resume_and_the_resume_is_exact(tmp_path):
    data = write_npz_data(tmp_path / "data", n_train=(40, 40), size=16)  # 10 steps per epoch
    settings = ["--data", str(data), "--model", "ghostnet_050", "--model-kwargs", "{stem_stride: 1}",
                "--preset", "cifar", "--img-size", "16", "--batch-size", "8", "--workers", "0", "--epochs", "2",
                "--lr", "0.05", "--no-progress", "--no-plots", "--save-every-steps", "5"]
    interrupted, marker = tmp_path / "interrupted", tmp_path / "paused"
    proc = subprocess.Popen([sys.executable, "-c", PAUSE_AFTER_SAVE, str(marker), "5", "train", *settings,
                             "--output", str(interrupted)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=CLI_ENV, preexec_fn=_sigint_at_default)
    deadline = time.monotonic() + 300  # a guard against a hung child only: the pause waits for the signal
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    if not marker.exists():
        proc.kill()
        pytest.fail(f"the run never reached its pause: {proc.communicate()[1][-2000:]}")
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    result = subprocess.CompletedProcess(proc.args, proc.returncode, "", stderr)
    line = assert_one_line_error(result, "interrupted", str(interrupted / "last.pt"),
                                 f"ghostnet train --resume --output {interrupted}", status=130)
    assert "(epoch 1, step 5)" in line  # stopped in the first of two epochs, at the checkpoint it paused after
    assert not (interrupted / ".lock").exists()
    resumed = run_cli("train", "--resume", "--output", str(interrupted))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    reference = run_cli("train", *settings, "--output", str(tmp_path / "reference"))
    assert reference.returncode == 0, reference.stderr[-2000:]
    a = torch.load(interrupted / "last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "reference" / "last.pt", weights_only=True)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _ctrl_c() -> None:
    """A Ctrl-C here and now: raise_signal runs the SIGINT handler before it returns, so KeyboardInterrupt comes from
    this very line, as it would at a terminal."""
    signal.raise_signal(signal.SIGINT)


def _interrupt_in(phase: str, monkeypatch, out: Path) -> dict:
    """Make the run get Ctrl-C in `phase` (settings of PHASE_ARGS: 5 steps, checkpoints at steps 2 and 4)."""
    import ghostnet.train
    import ghostnet.train.engine as engine
    import ghostnet.train.metrics as metrics

    seen: dict = {}
    if phase == "step":  # in the loop, at global step 3
        record = engine._record_step

        def record_then_interrupt(state, *args, **kwargs):
            logged = record(state, *args, **kwargs)
            if state.progress.global_step == 3:
                _ctrl_c()
            return logged

        monkeypatch.setattr(engine, "_record_step", record_then_interrupt)
    elif phase == "eval":  # inside the evaluation loop (metrics.autocast wraps each of its forward passes)
        monkeypatch.setattr(metrics, "autocast", lambda *args: _ctrl_c())
    elif phase == "save":  # the checkpoint of step 4 is written to its temporary name, not yet renamed to last.pt
        save = torch.save

        def save_then_interrupt(obj, f, *args, **kwargs):
            if not isinstance(obj, dict) or obj.get("progress", {}).get("global_step") != 4:
                return save(obj, f, *args, **kwargs)
            seen["before"] = (out / "last.pt").read_bytes()
            save(obj, f, *args, **kwargs)
            _ctrl_c()

        monkeypatch.setattr(torch, "save", save_then_interrupt)
    elif phase == "final":  # after the last epoch's outputs, in the run's end (curves, TensorBoard)
        monkeypatch.setattr(engine, "_finish", lambda *args: _ctrl_c())
    elif phase == "returned":  # the run is over; Ctrl-C comes as the command reads its result to print it
        run = ghostnet.train.train

        class InterruptedWhenRead(dict):
            def __getitem__(self, key):
                _ctrl_c()

        def train_then_interrupt(*args, **kwargs):
            return InterruptedWhenRead(run(*args, **kwargs))

        monkeypatch.setattr(ghostnet.train, "train", train_then_interrupt)
    return seen


PHASE_ARGS = ["--model", "ghostnet_050", "--model-kwargs", "{stem_stride: 1}", "--preset", "cifar", "--img-size", "16",
              "--batch-size", "8", "--workers", "0", "--epochs", "1", "--no-progress", "--no-plots",
              "--save-every-steps", "2"]


@pytest.fixture(scope="module")
def phase_data(tmp_path_factory):
    """Data for 5 steps, and the last.pt of the uninterrupted run."""
    from ghostnet.cli import main

    data = write_npz_data(tmp_path_factory.mktemp("npz"))
    out = tmp_path_factory.mktemp("reference")
    with single_thread():
        assert main(["train", "--data", str(data), *PHASE_ARGS, "--output", str(out)]) == 0
    return data, torch.load(out / "last.pt", weights_only=True)


@pytest.fixture
def sigint_raises():
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.mark.slow
@pytest.mark.parametrize("phase, said", [("step", "(epoch 1, step 2)"), ("eval", "(epoch 1, step 4)"),
                                         ("save", "(epoch 1, step 2)"), ("final", "after the last epoch"),
                                         ("returned", "after the last epoch")])
def test_ctrl_c_in_every_phase_says_how_to_resume(phase, said, phase_data, tmp_path, monkeypatch, capsys,
                                                  sigint_raises, one_thread):
    from ghostnet.cli import main

    data, reference = phase_data
    out = tmp_path / "run"
    seen = _interrupt_in(phase, monkeypatch, out)
    try:
        status = main(["train", "--data", str(data), *PHASE_ARGS, "--output", str(out)])
    except KeyboardInterrupt:
        pytest.fail(f"Ctrl-C in phase {phase} escaped the command")
    err = capsys.readouterr().err
    result = subprocess.CompletedProcess([], status, "", err)
    line = assert_one_line_error(result, "interrupted", said, str(out / "last.pt"),
                                 f"ghostnet train --resume --output {out}", status=130)
    assert not (out / ".lock").exists(), line
    assert not list(out.glob(".*.tmp"))  # nothing half-written left behind
    if phase == "save":  # the interrupted save left the checkpoint before it intact
        assert (out / "last.pt").read_bytes() == seen["before"]
    monkeypatch.undo()
    assert main(["train", "--resume", "--output", str(out)]) == 0, capsys.readouterr().err[-2000:]
    resumed = torch.load(out / "last.pt", weights_only=True)
    assert resumed["progress"] == reference["progress"]
    assert all(torch.equal(v, reference["model"][k]) for k, v in resumed["model"].items())
    assert (out / "last.safetensors").is_file() and (out / "best.safetensors").is_file()


@pytest.mark.slow
def test_closed_pipe_ends_quietly():
    proc = subprocess.Popen([*CLI, "models"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=CLI_ENV)
    proc.stdout.close()  # the reader is gone before anything is written, as with `ghostnet models | head -0`
    stderr = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 128 + signal.SIGPIPE
    assert stderr == ""


@pytest.mark.slow
def test_corrupt_image_in_a_loader_worker_is_one_line_naming_the_file(tmp_path):
    data = write_image_folder(tmp_path / "data", classes=("a", "b"), per_class=4)
    corrupt = data / "val" / "b" / "broken.png"
    corrupt.write_bytes(b"\x89PNG not really")
    checkpoint = _tiny_image_checkpoint(tmp_path, data)
    result = run_cli("eval", "--checkpoint", str(checkpoint), "--data", str(data), "--workers", "2")
    line = assert_one_line_error(result, str(corrupt), "cannot read image")
    assert "DataLoader worker" not in result.stderr, line


def _tiny_image_checkpoint(tmp_path: Path, data: Path, classes=("a", "b")) -> Path:
    import ghostnet
    from ghostnet.train.state import export_weights, model_info

    model = ghostnet.create_model("ghostnet_050", num_classes=len(classes))
    config = dict(input_size=(3, 20, 20), crop_pct=1.0, interpolation="bilinear", mean=(0.5,) * 3, std=(0.5,) * 3)
    path = tmp_path / "ckpt.safetensors"
    export_weights(model.state_dict(), path, model_info("ghostnet_050", {"num_classes": len(classes)},
                                                        list(classes), config))
    return path


# ---------------------------------------------------------------------------------------------- errors name the cause


@pytest.mark.slow
def test_bad_flag_value_is_blamed_on_the_flag_not_the_recipe(tmp_path):
    result = run_cli("train", "--recipe", "imagewoof_ghostnet", "--data", str(tmp_path), "--epochs", "0",
                     "--output", str(tmp_path / "run"))
    line = assert_one_line_error(result, "--epochs 0", "epochs must be >= 1")
    assert "imagewoof_ghostnet.yaml" not in line


@pytest.mark.slow
def test_data_folder_without_images_names_the_folder(tmp_path):
    (tmp_path / "data" / "train" / "a").mkdir(parents=True)
    (tmp_path / "data" / "val" / "a").mkdir(parents=True)
    result = run_cli("train", "--data", str(tmp_path / "data"), "--output", str(tmp_path / "run"))
    assert_one_line_error(result, str(tmp_path / "data" / "train"), "no valid file")


@pytest.mark.slow
def test_eval_refuses_a_checkpoint_for_other_classes_unless_told(tmp_path):
    data = write_image_folder(tmp_path / "data", classes=("airplane", "ship"), per_class=2)
    checkpoint = _tiny_image_checkpoint(tmp_path, data, classes=("Shih-Tzu", "beagle"))
    result = run_cli("eval", "--checkpoint", str(checkpoint), "--data", str(data), "--workers", "0")
    assert_one_line_error(result, "Shih-Tzu", "beagle", "airplane", "ship", "--ignore-class-names")
    result = run_cli("eval", "--checkpoint", str(checkpoint), "--data", str(data), "--workers", "0",
                     "--ignore-class-names")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "top-1" in result.stdout


@pytest.mark.slow
def test_predict_warns_about_a_tiny_image(tmp_path):
    from PIL import Image

    data = write_image_folder(tmp_path / "data", classes=("a", "b"), per_class=2)
    checkpoint = _tiny_image_checkpoint(tmp_path, data)
    tiny, fine = tmp_path / "tiny.png", tmp_path / "fine.png"
    Image.new("RGB", (8, 8), (200, 10, 10)).save(tiny)
    Image.new("RGB", (24, 24), (200, 10, 10)).save(fine)
    result = run_cli("predict", "--checkpoint", str(checkpoint), str(tiny), str(fine))
    assert result.returncode == 0, result.stderr[-2000:]
    warnings = [line for line in result.stderr.splitlines() if "warning" in line]
    assert len(warnings) == 1 and str(tiny) in warnings[0] and "8x8" in warnings[0], result.stderr


@pytest.mark.slow
def test_debug_shows_the_traceback():
    result = run_cli("--debug", "models", "no-such-model*")
    assert result.returncode != 0 and "Traceback" in result.stderr
    result = run_cli("models", "no-such-model*", GHOSTNET_DEBUG="1")
    assert "Traceback" in result.stderr


# ---------------------------------------------------------------------------------------------- files and short runs


@pytest.mark.slow
def test_checkpoints_are_readable_as_the_umask_allows(tmp_path):
    from ghostnet.train import train
    from ghostnet.train.config import make_config

    data = write_npz_data(tmp_path / "data")
    old = os.umask(0o022)
    try:
        train(make_config(tiny_config(data, tmp_path / "run", epochs=1, plots=True)))
    finally:
        os.umask(old)
    written = sorted(p for p in (tmp_path / "run").iterdir() if p.is_file())
    assert {p.name for p in written} >= {"last.pt", "best.pt", "last.safetensors", "metrics.jsonl", "curves.png"}
    assert {p.name: oct(p.stat().st_mode & 0o777) for p in written} == {p.name: "0o644" for p in written}


@pytest.mark.slow
def test_one_epoch_of_the_imagewoof_recipe_on_500_images_trains(tmp_path, shared_data):
    """The recipe's 1-epoch warm-up would take the whole run: it is cut, the lr peaks, and the loss falls."""
    out = tmp_path / "run"
    result = run_cli("train", "--recipe", "imagewoof_ghostnet", "--data", str(shared_data / "imagewoof"),
                     "--subset", "500", "--val-subset", "100", "--epochs", "1", "--batch-size", "8",
                     "--output", str(out), "--no-progress", "--no-plots", timeout=1800)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "cut to 0.2" in result.stdout + result.stderr
    row = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert row["lr_max"] == pytest.approx(3e-3)  # the recipe's peak
    losses = np.array([s["loss"] for s in row["steps"]])
    quarter = len(losses) // 4
    assert losses[-quarter:].mean() < losses[:quarter].mean() - 0.1, losses.round(3).tolist()


# ---------------------------------------------------------------------------------------------- one spelling


@pytest.mark.slow
def test_profile_compare_takes_every_spelling():
    for spec in ("torchvision:mobilenet_v3_small", "torchvision.models:mobilenet_v3_small", "timm:ghostnet_050"):
        result = run_cli("profile", "ghostnet_050", "--compare", spec, "--no-measure")
        assert result.returncode == 0, (spec, result.stderr[-2000:])


@pytest.mark.slow
def test_eval_takes_trains_subset_flag(tmp_path):
    data = write_image_folder(tmp_path / "data", classes=("a", "b"), per_class=4)
    checkpoint = _tiny_image_checkpoint(tmp_path, data)
    args = ("eval", "--checkpoint", str(checkpoint), "--data", str(data), "--workers", "0")
    result = run_cli(*args, "--val-subset", "3")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "(3 images)" in result.stdout
    result = run_cli(*args, "--subset", "3")
    assert result.returncode == 2 and "unrecognized arguments: --subset" in result.stderr


class _Writes:
    """A stderr that records each write, as the pipe a process shares with others receives them."""

    def __init__(self):
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return len(text)

    def flush(self) -> None:
        pass


def test_an_error_line_reaches_stderr_in_one_write(monkeypatch):
    """torchrun's ranks share one stderr and each reports the same stop: a line written as text and newline
    separately ran two ranks' lines together (the DDP divergence test then counted one stop instead of two)."""
    from ghostnet.cli import main as cli_main

    stderr = _Writes()
    monkeypatch.setattr(sys, "stderr", stderr)
    assert cli_main(["info", "no_such_model"]) == 2
    assert len(stderr.writes) == 1, stderr.writes
    assert stderr.writes[0].startswith("ghostnet info: error: ") and stderr.writes[0].endswith("\n")
