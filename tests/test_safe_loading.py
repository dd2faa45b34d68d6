"""No file a user loads runs code: a checkpoint or weights file carrying a pickle payload is refused, unexecuted."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from edgereid.errors import ModelFileError  # noqa: E402
from edgereid.training.checkpoint import (FORMAT, VERSION, convert_checkpoint, load_checkpoint,  # noqa: E402
                                          read_checkpoint, save_checkpoint)


class _Payload:
    """Unpickling this writes `marker`: what a malicious model file would do (with worse than a file)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('ran')",))


def _evil_checkpoint(path, marker, model) -> None:
    """A file that looks like an edgereid checkpoint in every field, plus the payload."""
    torch.save({"format": FORMAT, "version": VERSION, "model_config": model.config_dict(),
                "state_dict": model.state_dict(), "metadata": {}, "x": _Payload(marker)}, path)


@pytest.fixture()
def evil(tmp_path, reference_model):
    marker = tmp_path / "pwned.txt"
    ckpt = tmp_path / "evil.pt"
    _evil_checkpoint(ckpt, marker, reference_model)
    weights = tmp_path / "evil_backbone.pth"
    torch.save({**reference_model.backbone.state_dict(), "x": _Payload(marker)}, weights)
    return {"checkpoint": ckpt, "weights": weights, "marker": marker, "root": tmp_path}


def _cli(args, capsys) -> str:
    from edgereid.cli.main import main

    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in args])
    assert exit_info.value.code == 2
    return capsys.readouterr().err


def _assert_refused(message: str, path, marker) -> None:
    assert "refused to load" in message and str(path) in message and "could run code" in message
    assert "builtins.exec" in message  # names what the file asked for
    assert not marker.exists(), "the payload ran"


def test_the_payload_does_run_under_an_unsafe_load(evil):
    # the control: the file really is malicious, so the refusals below are not vacuous
    torch.load(evil["checkpoint"], weights_only=False)
    assert evil["marker"].read_text() == "ran"


def test_read_checkpoint_refuses_the_payload(evil):
    with pytest.raises(ModelFileError) as err:
        read_checkpoint(evil["checkpoint"])
    _assert_refused(str(err.value), evil["checkpoint"], evil["marker"])


def test_export_refuses_the_payload(evil, capsys):
    err = _cli(["export", evil["checkpoint"], "-o", evil["root"] / "out.onnx"], capsys)
    _assert_refused(err, evil["checkpoint"], evil["marker"])
    assert not (evil["root"] / "out.onnx").exists()


def test_runtime_refuses_the_payload(evil):
    import edgereid

    with pytest.raises(ModelFileError) as err:
        edgereid.Runtime(evil["checkpoint"])
    _assert_refused(str(err.value), evil["checkpoint"], evil["marker"])


def test_parity_refuses_the_payload(evil, model_files, small_synthetic, capsys):
    data = small_synthetic["splits"].root if hasattr(small_synthetic["splits"], "root") else None
    data = data or next(small_synthetic["root"].rglob("bounding_box_test")).parent
    err = _cli(["parity", evil["checkpoint"], model_files["onnx"], "--data", data, "--max-query", 4], capsys)
    _assert_refused(err, evil["checkpoint"], evil["marker"])


def _train_args(small_synthetic, out) -> list:
    root = small_synthetic["root"]
    return ["train", "--reid-data", next(root.rglob("bounding_box_test")).parent,
            "--gender-data", next(root.rglob("gender_train.csv")), "--out", out, "--epochs", 1,
            "--stage2-epochs", 0]


def test_resume_refuses_the_payload(evil, small_synthetic, capsys, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    evil["checkpoint"].rename(out / "last.pt")
    err = _cli(_train_args(small_synthetic, out) + ["--resume"], capsys)
    _assert_refused(err, out / "last.pt", evil["marker"])


def test_pretrained_weights_refuse_the_payload(evil, small_synthetic, capsys, tmp_path):
    err = _cli(_train_args(small_synthetic, tmp_path / "run") + ["--pretrained", evil["weights"]], capsys)
    _assert_refused(err, evil["weights"], evil["marker"])
    err = _cli(["export", "--random-init", "--backbone-weights", evil["weights"], "-o", tmp_path / "x.onnx"], capsys)
    _assert_refused(err, evil["weights"], evil["marker"])


def test_a_checkpoint_edgereid_writes_loads_weights_only(tmp_path, reference_model):
    path = save_checkpoint(tmp_path / "m.pt", reference_model, rng={"python": __import__("random").getstate()})
    raw = torch.load(path, weights_only=True)  # the plain PyTorch call a user would make succeeds too
    assert raw["format"] == FORMAT
    model, _ = load_checkpoint(path, with_classifier=False)
    x = torch.randn(2, 3, 256, 128)
    with torch.no_grad():
        assert torch.equal(model(x)["embedding"], reference_model(x)["embedding"])


def test_altered_weights_contradict_the_metadata(tmp_path, reference_model):
    path = save_checkpoint(tmp_path / "m.pt", reference_model)
    ckpt = torch.load(path, weights_only=True)
    key = next(k for k in ckpt["state_dict"] if k.endswith("conv1.weight"))
    ckpt["state_dict"][key] = ckpt["state_dict"][key] + 0.01
    torch.save(ckpt, path)
    with pytest.raises(ModelFileError, match="do not match the checkpoint's own metadata"):
        load_checkpoint(path)


def test_an_old_checkpoint_is_converted_without_running_code(tmp_path, reference_model):
    np.random.seed(5)
    old_state = np.random.get_state()
    old = tmp_path / "old.pt"
    save_checkpoint(old, reference_model, rng={"numpy": old_state})  # how checkpoints were written before
    with pytest.raises(ModelFileError, match="convert-checkpoint"):
        read_checkpoint(old)
    new = convert_checkpoint(old, tmp_path / "new.pt")
    state = read_checkpoint(new)["rng"]["numpy"]
    from edgereid.training.checkpoint import set_numpy_rng_state

    np.random.seed(0)
    set_numpy_rng_state(state)
    after = np.random.random(5)
    np.random.set_state(old_state)
    assert np.array_equal(after, np.random.random(5))
    assert torch.equal(read_checkpoint(new)["state_dict"]["backbone.conv1.weight"],
                       reference_model.state_dict()["backbone.conv1.weight"])


def test_conversion_refuses_a_payload_too(evil, capsys):
    err = _cli(["convert-checkpoint", evil["checkpoint"], evil["root"] / "new.pt"], capsys)
    _assert_refused(err, evil["checkpoint"], evil["marker"])
    assert not (evil["root"] / "new.pt").exists()


def test_no_code_path_deserialises_user_files_unsafely():
    """The rule as a check on the source: no unsafe torch.load, pickle, allow_pickle or yaml.load anywhere."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    offences = []
    for path in [p for d in ("edgereid", "training", "export", "calibration", "benchmarks", "examples")
                 for p in (root / d).rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call):
                name = ast.unparse(node.func)
                kwargs = {k.arg: ast.unparse(k.value) for k in node.keywords}
                if name == "torch.load" and kwargs.get("weights_only") != "True":
                    offences.append(f"{path}:{node.lineno} torch.load without weights_only=True")
                if name == "np.load" and kwargs.get("allow_pickle", "False") != "False":
                    offences.append(f"{path}:{node.lineno} np.load(allow_pickle=...)")
                if name in ("pickle.load", "pickle.loads", "yaml.load", "yaml.unsafe_load", "marshal.loads"):
                    offences.append(f"{path}:{node.lineno} {name}")
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                # safe_load names pickle only for the exception type its refusals catch
                if ("pickle" in names or "dill" in names) and path.name != "safe_load.py":
                    offences.append(f"{path}:{node.lineno} imports pickle")
    assert not offences, offences
