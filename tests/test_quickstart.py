"""The README's main command end to end at toy size: synthetic data -> train -> export -> FP16/INT8 -> evaluate
-> search grid -> report. The accuracy targets belong to the full-size run (README, Quickstart); this checks
that every stage runs and the report holds what the issue names."""
import json

import pytest

pytest.importorskip("torch")
pytest.importorskip("onnx")
pytest.importorskip("edgereid.training.quickstart")


def test_quickstart_pipeline_writes_report_models_and_grid(tmp_path):
    from edgereid.calibration.int8 import quantize_for_quickstart
    from edgereid.training.quickstart import run_quickstart

    lines = []
    report = run_quickstart(
        tmp_path / "qs", threads=2, progress=False, echo=lines.append,
        data_overrides=dict(num_ids=12, images_per_id_per_cam=2, num_cameras=2, gender_images=80,
                            image_size=(64, 32), num_distractors=2, num_junk=1),
        train_overrides=dict(image_height=64, image_width=32, pad=2, epochs=1, stage2_epochs=1, reid_p=4,
                             reid_k=2, gender_batch=8),
        quantize=lambda onnx_path, paths: quantize_for_quickstart(onnx_path, paths, num=16))
    saved = json.loads((tmp_path / "qs" / "report.json").read_text())
    for r in (report, saved):
        assert 0.0 <= r["reid"]["rank1"] <= 1.0 and 0.0 <= r["reid"]["mAP"] <= 1.0
        assert 0.0 <= r["gender"]["accuracy"] <= 1.0
        assert set(r["models"]) == {"fp32", "fp16", "int8"}
    for name in ("model.onnx", "model.fp16.onnx", "model.int8.onnx", "report.md", "search_grid.png",
                 "train/last.pt"):
        assert (tmp_path / "qs" / name).is_file(), name
    assert (tmp_path / "qs" / "search_grid.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (tmp_path / "qs" / "report.md").read_text()
    assert "| int8 |" in md and "search_grid.png" in md
    assert any("report:" in line and "report.md" in line for line in lines)  # it says where the outputs are
