"""Published weights served from 127.0.0.1 in the test process: a tiny HTTP server, entries of the weights table
pointed at it, and the isolation (private cache and table copy, no network but 127.0.0.1) the tests run under.

Used by tests/test_hub.py and tests/test_finetune.py. An entry registered here lives in the test process only: a
`python -m ghostnet` subprocess does not see it (it can still reach the server's URLs).
"""
from __future__ import annotations

import functools
import hashlib
import http.server
import io
import threading
import urllib.parse
import urllib.request
from typing import Any, Optional

import pytest
import torch

from ghostnet import create_model
from ghostnet import weights as weights_table
from ghostnet.download import cache_dir
from ghostnet.weights import PretrainedWeights, get_weights, imagenet_data_config, register_weights


class WeightServer:
    """Serves in-memory files over HTTP on 127.0.0.1 and records every request path."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.truncate: set[str] = set()  # send the full Content-Length, then only half the body
        self.no_length: set[str] = set()  # send half the body with no Content-Length
        self.hits: list[str] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                server.hits.append(self.path)
                body = server.files.get(self.path)
                if body is None:
                    self.send_error(404, "no such file")
                    return
                self.send_response(200)
                if self.path not in server.no_length:
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                cut = self.path in server.truncate or self.path in server.no_length
                self.wfile.write(body[: len(body) // 2] if cut else body)

            def log_message(self, *args) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()
        self.running = True

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def stop(self) -> None:
        if self.running:
            self.httpd.shutdown()
            self.httpd.server_close()
            self.thread.join(timeout=5)
            self.running = False


def isolate(tmp_path, monkeypatch) -> None:
    """A private cache, a private copy of the weights table, and no network except 127.0.0.1 (for a fixture)."""
    monkeypatch.setenv("GHOSTNET_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("GHOSTNET_OFFLINE", raising=False)
    monkeypatch.setattr(weights_table, "_TABLE", {k: dict(v) for k, v in weights_table._TABLE.items()})
    monkeypatch.setattr(weights_table, "_DEFAULT_TAG", dict(weights_table._DEFAULT_TAG))
    real_urlopen = urllib.request.urlopen

    def local_only(request, *args, **kwargs):
        url = request.full_url if isinstance(request, urllib.request.Request) else request
        host = urllib.parse.urlsplit(url).hostname
        assert host == "127.0.0.1", f"a test tried to reach {url}"
        return real_urlopen(request, *args, **kwargs)

    monkeypatch.setattr(urllib.request, "urlopen", local_only)


@functools.lru_cache(maxsize=None)
def _template(name: str) -> dict[str, torch.Tensor]:
    return create_model(name).state_dict()


def random_state(name: str, seed: int) -> dict[str, torch.Tensor]:
    """A state_dict for `name` with every float tensor random (BN statistics too, so that any mix-up shows), of the
    scale a trained network has: the model's initial weights times a random factor in [0.5, 1.5), plus noise of a
    tenth of their spread (at least 0.01); BN running variances stay positive. (Plain N(0, 1) weights overflow
    float32 within a few stages of an eval-mode network and a negative variance gives NaN: the trainer's
    divergence guard stops such a run, rightly.)"""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, value in _template(name).items():
        if not value.is_floating_point():
            state[key] = value.clone()
            continue
        factor = 0.5 + torch.rand(value.shape, generator=gen)
        spread = max(float(value.std()), 0.1) if value.numel() > 1 else 1.0  # zero-initialised biases get noise too
        noise = torch.randn(value.shape, generator=gen) * 0.1 * spread
        state[key] = value * factor + (noise.abs() if key.endswith("running_var") else noise)
    return state


def torch_bytes(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def serve_entry(server: WeightServer, name: str, tag: str, body: bytes, *, sha256="full", default=False,
                file_name=None, use_ema=False, path=None, interpolation="bilinear",
                data_config: Optional[dict[str, Any]] = None) -> PretrainedWeights:
    """Serve `body` and register it as `name`'s weights tagged `tag` (with `data_config`, default ImageNet's)."""
    path = path or f"/{name}-{tag}.pth"
    server.files[path] = body
    digest = hashlib.sha256(body).hexdigest()
    entry = PretrainedWeights(
        model=name, tag=tag, url=server.url(path), file_name=file_name or f"{name}-{tag}.pth", file_format="pth",
        sha256={"full": digest, "prefix": digest[:8]}.get(sha256, sha256), use_ema=use_ema, top1=None, top5=None,
        accuracy_source="test", license="test", source="test",
        data_config=data_config or imagenet_data_config(interpolation))
    return register_weights(entry, default=default, replace=True)


def serve_published(server: WeightServer, model: str, path: str, body: bytes, **changes: Any) -> PretrainedWeights:
    """Re-register `model`'s default published entry (format, file name, data config kept unless `changes` says
    otherwise) at the local server."""
    published = get_weights(model)
    server.files[path] = body
    fields = {f: getattr(published, f) for f in published.__dataclass_fields__}
    fields.update(url=server.url(path), sha256=hashlib.sha256(body).hexdigest(), **changes)
    return register_weights(PretrainedWeights(**fields), default=True, replace=True)


def assert_state_equal(model: torch.nn.Module, state: dict[str, torch.Tensor], skip: tuple[str, ...] = ()) -> None:
    got = model.state_dict()
    for key, value in state.items():
        if not key.startswith(skip):
            assert torch.equal(got[key], value), key


def cache_listing() -> list[str]:
    folder = cache_dir()
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


@pytest.fixture
def server():
    """A WeightServer on 127.0.0.1 for one test."""
    srv = WeightServer()
    yield srv
    srv.stop()


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """`isolate` for every test of a module that imports this fixture (it is autouse there)."""
    isolate(tmp_path, monkeypatch)
