"""`--pretrained NAME`: a named backbone file fetched from a loopback HTTP server once, verified by SHA-256 and
reused; a wrong hash, an interrupted download and no network are each refused with the fix, leaving no file."""
from __future__ import annotations

import hashlib
import io
import os
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conftest import torchvision_style_state_dict  # noqa: E402

from edgereid.errors import ModelFileError, WeightsDownloadError  # noqa: E402
from edgereid.training import pretrained_registry  # noqa: E402
from edgereid.training.model import DualHeadReID  # noqa: E402
from edgereid.training.pretrained import load_backbone_weights  # noqa: E402
from edgereid.weights_cache import RemoteFile, fetch, weights_dir  # noqa: E402

FILE = "resnet18-test0001.pth"


@pytest.fixture(scope="module")
def payload():
    """A torchvision-named ResNet-18 state dict (no IBN, non-trivial BN statistics, ImageNet fc) and its bytes."""
    state = torchvision_style_state_dict(seed=7)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    body = buffer.getvalue()
    return {"state": state, "body": body, "sha256": hashlib.sha256(body).hexdigest()}


@pytest.fixture()
def server(payload, monkeypatch):
    """ThreadingHTTPServer on 127.0.0.1: /<name> serves the file, /cut/<name> announces all of it, sends half
    and closes. `hits` counts GET requests per path."""
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)  # loopback only, whatever the machine's proxy settings
    hits: dict = {}
    body = payload["body"]

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            hits[self.path] = hits.get(self.path, 0) + 1
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2] if self.path.startswith("/cut/") else body)
            self.wfile.flush()
            self.close_connection = True

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield {"url": f"http://127.0.0.1:{httpd.server_address[1]}", "hits": hits}
    httpd.shutdown()
    httpd.server_close()
    thread.join(5)


@pytest.fixture()
def home(tmp_path, monkeypatch):
    """EDGEREID_HOME in tmp_path; returns the weights folder inside it."""
    monkeypatch.setenv("EDGEREID_HOME", str(tmp_path / "home"))
    return tmp_path / "home" / "weights"


def _register(monkeypatch, name: str, url: str, sha256: str, file_name: str = FILE) -> RemoteFile:
    remote = RemoteFile(url=url, file_name=file_name, sha256=sha256, description="test weights")
    monkeypatch.setitem(pretrained_registry.REGISTRY, name, remote)
    return remote


def _listing(folder) -> list:
    return sorted(os.listdir(folder)) if folder.exists() else []


def test_cache_root_follows_edgereid_home(monkeypatch, tmp_path):
    monkeypatch.setenv("EDGEREID_HOME", str(tmp_path / "h"))
    assert weights_dir() == tmp_path / "h" / "weights"
    monkeypatch.delenv("EDGEREID_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    assert weights_dir() == tmp_path / "user" / ".cache" / "edgereid" / "weights"


def test_named_weights_are_fetched_once_then_reused(server, payload, home, monkeypatch, capsys):
    _register(monkeypatch, "test_r18", f"{server['url']}/{FILE}", payload["sha256"])
    first = DualHeadReID()
    report = load_backbone_weights(first.backbone, "test_r18")
    assert server["hits"] == {f"/{FILE}": 1}
    assert "downloading " + FILE in capsys.readouterr().err  # progress, here as the one line for logs
    assert _listing(home) == [FILE]  # the file alone: no temp file left beside it
    assert (home / FILE).read_bytes() == payload["body"]
    state = payload["state"]
    assert sorted(report.unexpected) == ["fc.bias", "fc.weight"] and report.missing == []
    assert torch.equal(first.backbone.layer4[0].conv1.weight, state["layer4.0.conv1.weight"])
    ibn = first.backbone.layer2[1].bn1  # torchvision BN split into the IBN halves (64 / 64 of 128 channels)
    assert torch.equal(ibn.IN.weight, state["layer2.1.bn1.weight"][:64])
    assert torch.equal(ibn.BN.running_var, state["layer2.1.bn1.running_var"][64:])

    second = DualHeadReID()
    load_backbone_weights(second.backbone, "test_r18")
    assert server["hits"] == {f"/{FILE}": 1}  # reused from the cache, not downloaded again
    assert torch.equal(second.backbone.conv1.weight, state["conv1.weight"])


def test_publisher_prefix_is_checked_like_torch_hub(server, payload, home):
    good = RemoteFile(url=f"{server['url']}/{FILE}", file_name=FILE, sha256=payload["sha256"][:8])
    assert not good.full_digest and fetch(good, home, show_progress=False).is_file()
    other = "0" * 8 if not payload["sha256"].startswith("0" * 8) else "f" * 8
    (home / FILE).unlink()
    with pytest.raises(WeightsDownloadError, match="starting with " + other):
        fetch(RemoteFile(url=f"{server['url']}/{FILE}", file_name=FILE, sha256=other), home, show_progress=False)
    assert _listing(home) == []


def test_wrong_hash_is_refused_and_leaves_no_file(server, payload, home, monkeypatch):
    wrong = hashlib.sha256(b"some other file").hexdigest()
    _register(monkeypatch, "test_r18", f"{server['url']}/{FILE}", wrong)
    with pytest.raises(WeightsDownloadError) as err:
        load_backbone_weights(DualHeadReID().backbone, "test_r18")
    message = str(err.value)
    assert payload["sha256"] in message and wrong in message and "nothing was kept" in message
    assert str(home / FILE) in message and f"{server['url']}/{FILE}" in message  # where to place it by hand
    assert server["hits"] == {f"/{FILE}": 1}
    assert _listing(home) == []  # neither the file nor its temp file


def test_interrupted_download_leaves_no_partial_file(server, payload, home, monkeypatch):
    _register(monkeypatch, "test_r18", f"{server['url']}/cut/{FILE}", payload["sha256"])
    with pytest.raises(WeightsDownloadError) as err:
        load_backbone_weights(DualHeadReID().backbone, "test_r18")
    half, total = len(payload["body"]) // 2, len(payload["body"])
    assert f"stopped after {half} of {total} bytes" in str(err.value)
    assert str(home / FILE) in str(err.value)
    assert _listing(home) == []


def test_no_network_names_the_file_and_where_to_place_it(payload, home, monkeypatch):
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()  # nothing listens there now: connection refused, as offline
    url = f"http://127.0.0.1:{port}/{FILE}"
    _register(monkeypatch, "test_r18", url, payload["sha256"])
    with pytest.raises(WeightsDownloadError) as err:
        load_backbone_weights(DualHeadReID().backbone, "test_r18")
    message = str(err.value)
    assert f"could not download {FILE} from {url}" in message
    assert f"copy it to {home / FILE}" in message and payload["sha256"] in message and "EDGEREID_HOME" in message
    assert _listing(home) == []
    # ... and the copy placed there by hand is used, offline
    home.mkdir(parents=True, exist_ok=True)
    (home / FILE).write_bytes(payload["body"])
    model = DualHeadReID()
    load_backbone_weights(model.backbone, "test_r18")
    assert torch.equal(model.backbone.conv1.weight, payload["state"]["conv1.weight"])


def test_a_corrupt_cached_file_is_refused_with_the_fix(server, payload, home, monkeypatch):
    _register(monkeypatch, "test_r18", f"{server['url']}/{FILE}", payload["sha256"])
    fetch(pretrained_registry.REGISTRY["test_r18"], home, show_progress=False)
    data = bytearray((home / FILE).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (home / FILE).write_bytes(bytes(data))
    with pytest.raises(WeightsDownloadError, match=f"Delete {home / FILE}"):
        load_backbone_weights(DualHeadReID().backbone, "test_r18")
    assert server["hits"] == {f"/{FILE}": 1}  # refused, not silently replaced


def test_a_local_path_is_used_as_is_and_never_downloads(server, payload, home, monkeypatch, tmp_path):
    _register(monkeypatch, "test_r18", f"{server['url']}/{FILE}", payload["sha256"])
    local = tmp_path / "test_r18"  # a file that shadows the name: a path never causes a download
    local.write_bytes(payload["body"])
    monkeypatch.chdir(tmp_path)
    model = DualHeadReID()
    load_backbone_weights(model.backbone, "test_r18")
    assert server["hits"] == {} and _listing(home) == []
    assert torch.equal(model.backbone.conv1.weight, payload["state"]["conv1.weight"])


def test_neither_path_nor_name_lists_the_names(tmp_path):
    for spec in ("resnet19", str(tmp_path / "nope.pth"), tmp_path / "resnet18"):
        with pytest.raises(ModelFileError) as err:
            load_backbone_weights(DualHeadReID().backbone, spec)
        assert str(spec) in str(err.value)
        assert all(name in str(err.value) for name in ("resnet18", "resnet18_ibn_a"))


def test_registry_entries_are_well_formed():
    assert {"resnet18", "resnet18_ibn_a"} <= set(pretrained_registry.names())
    for name in ("resnet18", "resnet18_ibn_a"):
        remote = pretrained_registry.REGISTRY[name]
        assert remote.url.startswith("https://") and remote.url.endswith("/" + remote.file_name)
        # the publishers' convention: the first 8 hex digits of the SHA-256 are in the file name
        assert remote.sha256[:8] in remote.file_name
    with pytest.raises(ValueError):
        RemoteFile(url="https://x/y.pth", file_name="y.pth", sha256="abc")


def _cli(args, capsys, code=None) -> str:
    from edgereid.cli.main import main

    if code is None:
        main([str(a) for a in args])
    else:
        with pytest.raises(SystemExit) as exit_info:
            main([str(a) for a in args])
        assert exit_info.value.code == code
    captured = capsys.readouterr()
    return captured.out + captured.err


def test_cli_help_names_every_registered_weights(capsys):
    for command in ("train", "export"):
        text = " ".join(_cli([command, "--help"], capsys).split())
        assert "NAME|PATH" in text and "EDGEREID_HOME" in text
        assert all(name in text for name in pretrained_registry.names())


def test_cli_refuses_an_unknown_name_before_loading_anything(capsys, tmp_path):
    err = _cli(["train", "--pretrained", "resnet19", "--out", tmp_path / "run"], capsys, code=2)
    assert "resnet19" in err and "resnet18_ibn_a" in err
    assert not (tmp_path / "run").exists()
    err = _cli(["export", "--random-init", "--pretrained", "resnet19", "-o", tmp_path / "x.onnx"], capsys, code=2)
    assert "resnet19" in err and not (tmp_path / "x.onnx").exists()


def test_train_cli_loads_a_named_backbone(server, payload, home, monkeypatch, small_synthetic, capsys, tmp_path):
    from conftest import SMALL_TRAIN

    from edgereid.training import pretrained

    _register(monkeypatch, "test_r18", f"{server['url']}/{FILE}", payload["sha256"])
    loaded = {}
    real = pretrained.load_backbone_weights

    def spy(backbone, weights, **kw):  # the real loader; keeps a copy of what it loaded before training moves it
        report = real(backbone, weights, **kw)
        loaded.update({k: v.detach().clone() for k, v in backbone.state_dict().items()}, spec=weights)
        return report

    monkeypatch.setattr(pretrained, "load_backbone_weights", spy)
    data = small_synthetic["root"] / "data"
    settings = [f"--set={k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in SMALL_TRAIN.items()]
    out = _cli(["train", "--reid-data", data / "market1501", "--gender-data", data / "gender" / "gender_train.csv",
                "--gender-test-data", data / "gender" / "gender_test.csv", "--out", tmp_path / "run",
                "--pretrained", "test_r18", "--profile", "1", *settings], capsys)
    assert "steps per minute" in out
    assert loaded["spec"] == "test_r18" and server["hits"] == {f"/{FILE}": 1}
    assert _listing(home) == [FILE]
    state = payload["state"]
    assert torch.equal(loaded["layer3.1.conv2.weight"], state["layer3.1.conv2.weight"])
    assert torch.equal(loaded["layer1.0.bn1.IN.bias"], state["layer1.0.bn1.bias"][:32])
    assert torch.equal(loaded["layer1.0.bn1.BN.running_mean"], state["layer1.0.bn1.running_mean"][32:])


def test_export_random_init_with_a_named_backbone(server, payload, home, monkeypatch, capsys, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    _register(monkeypatch, "test_r18", f"{server['url']}/{FILE}", payload["sha256"])
    onnx_path = tmp_path / "m.onnx"
    out = _cli(["export", "--random-init", "--pretrained", "test_r18", "-o", onnx_path, "--no-simplify"], capsys)
    assert "backbone weights: loaded" in out and server["hits"] == {f"/{FILE}": 1}
    # the same model built here from the served file: export's seed for the heads, the served backbone
    torch.manual_seed(0)
    expected = DualHeadReID(embedding_dim=128)
    load_backbone_weights(expected.backbone, home / FILE)
    torch.manual_seed(0)
    untouched = DualHeadReID(embedding_dim=128).eval()
    x = np.random.default_rng(0).standard_normal((2, 3, 256, 128)).astype(np.float32)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = dict(zip([o.name for o in session.get_outputs()], session.run(None, {"images": x})))["embedding"]
    with torch.no_grad():
        want = expected.eval()(torch.from_numpy(x))["embedding"].numpy()
        without = untouched(torch.from_numpy(x))["embedding"].numpy()
    assert np.allclose(got, want, atol=1e-4)
    assert not np.allclose(got, without, atol=1e-2)  # the served backbone made the difference
    err = _cli(["export", "--pretrained", "test_r18", "-o", tmp_path / "y.onnx", tmp_path / "ckpt.pt"], capsys, 2)
    assert "--random-init" in err
