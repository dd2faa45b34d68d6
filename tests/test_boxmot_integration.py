"""edgereid as boxmot's appearance model: get_features against Runtime.infer on crops cut by hand, clipping,
empty boxes, no boxes; boxmot's real BoT-SORT and StrongSORT keeping people apart through a crossing on generated
video; tracklets -> cross-camera identities; the multi-camera tracker example end to end."""
from __future__ import annotations

import importlib.util
import os
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from benchmarks.synthetic_scenes import crossing_scene, detections, write_mot
from edgereid.errors import InvalidInputError, MissingDependencyError
from edgereid.integrations.boxmot import AppearanceModel, make_tracker, track_ids_of_detections
from edgereid.integrations.tracklets import IdentityMatcher, Tracklet, TrackletBuilder

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def need_boxmot():
    """boxmot, or a skip with the reason outside CI; CI installs it (.ci/run), so there a missing boxmot fails."""
    if os.environ.get("CI"):
        import boxmot

        return boxmot
    return pytest.importorskip("boxmot", reason="boxmot is not installed (docs/trackers.md, 'Install')")


@pytest.fixture(scope="module")
def small_model(reference_model, tmp_path_factory):
    """The seeded reference model exported at 64x32 input: a real edgereid file, 16x cheaper than 256x128."""
    from conftest import export_small

    return export_small(reference_model, tmp_path_factory.mktemp("boxmot") / "small.onnx")


@pytest.fixture(scope="module")
def runtime(small_model):
    from edgereid.runtime import Runtime

    with Runtime(small_model, threads=1) as rt:
        yield rt


@pytest.fixture(scope="module")
def scene():
    return crossing_scene(seed=1, num_frames=70)


@pytest.fixture()
def frame(scene):
    return scene[1][0].frames[20]


def unit_rows(x: np.ndarray) -> bool:
    return bool(np.allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5))


# -- get_features -------------------------------------------------------------------------------------------------
def test_get_features_equals_runtime_infer_on_crops_cut_by_hand(runtime, frame):
    model = AppearanceModel(runtime)
    boxes = np.array([[10.4, 20.6, 50.5, 150.2], [100.0, 30.0, 141.7, 170.49], [200.6, 0.2, 260.2, 99.5]])
    # rounded to the nearest pixel (halves to even, as numpy and boxmot round), written out by hand
    crops = [frame[21:150, 10:50], frame[30:170, 100:142], frame[0:100, 201:260]]
    emb = model.get_features(boxes, frame)
    ref = runtime.infer(crops)
    assert emb.dtype == np.float32 and emb.shape == (3, runtime.metadata.embedding_dim)
    np.testing.assert_allclose(emb, ref.embeddings, atol=1e-6)
    np.testing.assert_allclose(model.last_gender_prob, ref.gender_prob, atol=1e-6)
    assert unit_rows(emb) and model.last_valid.all() and model.calls == 1
    assert model.last_pixel_boxes.tolist() == [[10, 21, 50, 150], [100, 30, 142, 170], [201, 0, 260, 100]]
    # N x 6 detections work too: the first four columns are the box
    dets = np.hstack([boxes, np.full((3, 1), 0.9), np.zeros((3, 1))])
    np.testing.assert_allclose(model.get_features(dets, frame), emb, atol=1e-6)


def test_boxes_partly_outside_the_frame_are_clipped_to_it(runtime, frame):
    model = AppearanceModel(runtime)
    h, w = frame.shape[:2]
    boxes = np.array([[-15.2, 30.0, 40.0, h + 25.0], [w - 30.0, -12.0, w + 40.0, 80.0]])
    emb = model.get_features(boxes, frame)
    ref = runtime.infer([frame[30:h, 0:40], frame[0:80, w - 30:w]])
    np.testing.assert_allclose(emb, ref.embeddings, atol=1e-6)
    assert model.last_pixel_boxes.tolist() == [[0, 30, 40, h], [w - 30, 0, w, 80]]


def test_zero_area_boxes_get_the_black_crop_row_and_no_gender(runtime, frame):
    model = AppearanceModel(runtime)
    h, w = frame.shape[:2]
    boxes = np.array([[w + 10.0, 10.0, w + 60.0, 100.0],   # wholly right of the frame
                      [60.0, 40.0, 90.0, 160.0],           # an ordinary box
                      [100.2, 10.0, 100.4, 80.0],          # both x round to 100: no pixel
                      [20.0, -50.0, 60.0, -5.0]])          # wholly above
    emb = model.get_features(boxes, frame)
    meta = runtime.metadata
    black = runtime.infer([np.zeros((meta.height, meta.width, 3), np.uint8)]).embeddings[0]
    for i in (0, 2, 3):
        np.testing.assert_allclose(emb[i], black, atol=1e-6)
    np.testing.assert_allclose(emb[1], runtime.infer([frame[40:160, 60:90]]).embeddings[0], atol=1e-6)
    assert model.last_valid.tolist() == [False, True, False, False]
    assert np.isnan(model.last_gender_prob[[0, 2, 3]]).all() and np.isfinite(model.last_gender_prob[1])
    # what boxmot's trackers demand of every row (they stop on NaN or zero rows)
    assert np.isfinite(emb).all() and unit_rows(emb)
    strict = AppearanceModel(runtime, empty="error")
    with pytest.raises(InvalidInputError, match=r"box #0 .* no pixel inside the 320x192 frame"):
        strict.get_features(boxes, frame)
    with pytest.raises(InvalidInputError, match="box #1 "):
        strict.get_features(boxes[1:], frame)


def test_no_boxes_give_an_empty_matrix(runtime, frame):
    model = AppearanceModel(runtime)
    dim = runtime.metadata.embedding_dim
    for empty in (np.zeros((0, 4)), [], np.zeros((0, 6), np.float32)):
        out = model.get_features(empty, frame)
        assert out.shape == (0, dim) and out.dtype == np.float32
        assert model.last_gender_prob.shape == (0,) and model.last_valid.shape == (0,)


def test_bad_inputs_name_the_input_and_the_fix(runtime, frame):
    model = AppearanceModel(runtime)
    with pytest.raises(InvalidInputError, match="uint8 HxWx3 BGR"):
        model.get_features([[0, 0, 10, 10]], frame.astype(np.float32))
    with pytest.raises(InvalidInputError, match="uint8 HxWx3 BGR"):
        model.get_features([[0, 0, 10, 10]], frame[:, :, 0])
    with pytest.raises(InvalidInputError, match=r"N x 4"):
        model.get_features(np.array([1.0, 2.0, 3.0]), frame)
    with pytest.raises(InvalidInputError, match=r"box #1 .* finite"):
        model.get_features([[0, 0, 10, 10], [0, np.nan, 10, 10]], frame)
    with pytest.raises(InvalidInputError, match="empty must be one of"):
        AppearanceModel(runtime, empty="nan")
    with pytest.raises(InvalidInputError, match="open Runtime"):
        AppearanceModel(runtime, threads=2)


def test_features_of_reuses_the_trackers_call_and_runs_again_for_other_boxes(runtime, frame):
    model = AppearanceModel(runtime)
    boxes = np.array([[10.0, 20.0, 50.0, 150.0], [100.0, 30.0, 140.0, 170.0]], np.float32)
    first = model.get_features(boxes, frame)
    emb, gender = model.features_of(boxes.astype(np.float64), frame)
    assert model.calls == 1 and np.array_equal(emb, first)
    np.testing.assert_array_equal(gender, model.last_gender_prob)
    other, _ = model.features_of(boxes[:1], frame)
    assert model.calls == 2 and np.array_equal(other, first[:1])
    model.features_of(boxes[:1], frame.copy())  # equal pixels in another array: still the same frame
    assert model.calls == 2
    model.features_of(boxes[:1], np.ascontiguousarray(frame[::-1]))
    assert model.calls == 3


def test_model_path_and_runtime_options_open_and_close_their_own_runtime(small_model, runtime, frame):
    boxes = np.array([[10.0, 20.0, 50.0, 150.0]])
    with AppearanceModel(small_model, threads=1, max_batch=4) as model:
        assert model.runtime.max_batch == 4 and model.dim == runtime.metadata.embedding_dim
        np.testing.assert_allclose(model.get_features(boxes, frame), runtime.infer([frame[20:150, 10:50]]).embeddings,
                                   atol=1e-6)


# -- boxmot's trackers ----------------------------------------------------------------------------------------------
def test_track_ids_of_detections_reads_boxmots_detection_index_column():
    tracks = np.array([[0, 0, 5, 5, 7, 0.9, 0, 2], [1, 1, 6, 6, 3, 0.8, 0, 0], [2, 2, 7, 7, 9, 0.5, 0, -1]])
    assert track_ids_of_detections(tracks, 4).tolist() == [3, -1, 7, -1]
    assert track_ids_of_detections(np.zeros((0, 8)), 2).tolist() == [-1, -1]
    with pytest.raises(InvalidInputError, match="N x 8"):
        track_ids_of_detections(np.zeros((2, 5)), 2)


def run_tracker(tracker, model, sequence) -> tuple:
    """Feed the true boxes frame by frame; returns ({true pid: [track id per tracked frame]}, frames with boxes)."""
    ids: dict = {}
    with_boxes = 0
    for t in sorted(sequence.frames):
        dets, pids = detections(sequence, t)
        with_boxes += len(dets) > 0
        tracks = tracker.update(dets, sequence.frames[t])
        for pid, tid in zip(pids, track_ids_of_detections(tracks, len(dets))):
            if tid >= 0:
                ids.setdefault(int(pid), []).append(int(tid))
    return ids, with_boxes


@pytest.mark.parametrize("name", ["botsort", "strongsort"])
def test_tracker_keeps_people_apart_through_a_crossing(name, runtime, scene):
    need_boxmot()
    model = AppearanceModel(runtime)
    tracker = make_tracker(name, model)
    ids, with_boxes = run_tracker(tracker, model, scene[1][0])
    # the tracker asked edgereid for features on every frame that had a detection, and only then
    assert model.calls == with_boxes > 0
    assert sorted(ids) == [0, 1, 2]  # people 0 and 1 cross; 2 walks behind them
    majority = {}
    for pid, seq in ids.items():
        values, counts = np.unique(seq, return_counts=True)
        majority[pid] = int(values[np.argmax(counts)])
        # each person keeps one track id for (nearly) all of the walk, crossing included
        assert counts.max() >= 0.9 * len(seq), (pid, seq)
        assert len(seq) >= 30, (pid, len(seq))
    assert len(set(majority.values())) == 3, majority


@pytest.mark.parametrize("name", ["deepocsort", "boosttrack", "hybridsort", "occluboost"])
def test_other_appearance_trackers_call_the_model(name, runtime, scene):
    need_boxmot()
    model = AppearanceModel(runtime)
    sequence = scene[1][0]
    tracker = make_tracker(name, model)
    frames = [t for t in sorted(sequence.frames) if t in sequence.boxes][:6]
    for t in frames:
        tracker.update(detections(sequence, t)[0], sequence.frames[t])
    assert model.calls == len(frames) and len(model.last_valid) == len(sequence.boxes[frames[-1]])


def test_make_tracker_refuses_motion_only_and_unknown_trackers(runtime):
    need_boxmot()
    with pytest.raises(InvalidInputError, match="motion only"):
        make_tracker("bytetrack", AppearanceModel(runtime))
    with pytest.raises(InvalidInputError, match="unknown tracker 'deepsort'"):
        make_tracker("deepsort", AppearanceModel(runtime))
    with pytest.raises(InvalidInputError, match="get_features"):
        make_tracker("botsort", object())
    with pytest.raises(InvalidInputError, match="use_embeddings"):
        make_tracker("botsort", AppearanceModel(runtime), use_embeddings=False)


def test_missing_boxmot_or_its_dependencies_name_the_install(monkeypatch, runtime):
    monkeypatch.setitem(sys.modules, "boxmot", None)  # `import boxmot` now raises ImportError
    with pytest.raises(MissingDependencyError, match=r'edgereid\[boxmot\].*requirements/boxmot-cpu.txt'):
        make_tracker("botsort", AppearanceModel(runtime))
    fake = types.ModuleType("boxmot")
    fake.__version__ = "25.0.0"

    def missing(name):
        raise ModuleNotFoundError("No module named 'scipy'", name="scipy")

    fake.__getattr__ = missing
    monkeypatch.setitem(sys.modules, "boxmot", fake)
    with pytest.raises(MissingDependencyError, match="BotSort needs scipy.*boxmot-cpu.txt"):
        make_tracker("botsort", AppearanceModel(runtime))
    fake.__version__ = "16.0.11"
    with pytest.raises(MissingDependencyError, match="boxmot >= 20.0"):
        make_tracker("botsort", AppearanceModel(runtime))


# -- tracklets -> identities ------------------------------------------------------------------------------------------
def unit(v) -> np.ndarray:
    v = np.asarray(v, np.float32)
    return v / np.linalg.norm(v)


def tracklet(camera, track, frames, direction, gender=0.5) -> Tracklet:
    t = Tracklet(camera, track)
    for i, f in enumerate(frames):
        # crops scattered around `direction`; their mean points along it
        wobble = np.zeros(len(direction), np.float32)
        wobble[-1] = 0.2 if i % 2 else -0.2
        t.add(f, unit(unit(direction) + wobble), gender, (0, 0, 10, 20))
    return t


def test_tracklet_mean_is_the_normalised_mean_of_normalised_crops():
    t = Tracklet(0, 1)
    t.add(1, np.array([3.0, 0, 0]), 0.8, (0, 0, 1, 1))
    t.add(2, np.array([0, 0.5, 0]), float("nan"), (0, 0, 1, 1))
    np.testing.assert_allclose(t.mean_embedding, unit([1, 1, 0]), atol=1e-6)
    assert t.gender_prob == pytest.approx(0.8) and (t.first, t.last, len(t)) == (1, 2, 2)


def test_tracklet_builder_closes_a_track_unseen_for_max_gap_frames():
    b = TrackletBuilder(camera=1, max_gap=2)
    e = np.eye(3, dtype=np.float32)
    assert b.add(1, [5, 7], e[:2], [0.1, 0.9], [(0, 0, 1, 1)] * 2) == []
    assert b.add(2, [5, -1], e[:2], [0.1, 0.9], [(0, 0, 1, 1)] * 2) == []  # -1: not tracked, skipped
    assert b.add(3, [5], e[:1], [0.1], [(0, 0, 1, 1)]) == []  # track 7 last seen at 1: 3 - 2 = 1, not before
    closed = b.add(4, [5], e[:1], [0.1], [(0, 0, 1, 1)])
    assert [(t.camera, t.track, t.frames) for t in closed] == [(1, 7, [1])]
    assert [(t.track, t.frames) for t in b.close_all()] == [(5, [1, 2, 3, 4])]
    with pytest.raises(InvalidInputError, match="2 track ids but 1 embeddings"):
        b.add(5, [1, 2], e[:1], [0.5, 0.5], [(0, 0, 1, 1)] * 2)


def test_identity_matcher_joins_across_cameras_and_respects_time_and_gender():
    m = IdentityMatcher(match_distance=0.6, gender_margin=0.25)
    a, b = [1, 0, 0, 0], [0, 1, 0, 0]
    assert m.assign(tracklet(0, 1, range(1, 20), a, gender=0.9)) == 0
    assert m.assign(tracklet(0, 2, range(5, 25), b, gender=0.1)) == 1
    # camera 1, later: person a again (close to a, far from b), then person b
    assert m.assign(tracklet(1, 1, range(40, 60), [1, 0.2, 0, 0], gender=0.8)) == 0
    assert m.assign(tracklet(1, 2, range(41, 61), [0.1, 1, 0, 0], gender=0.2)) == 1
    # near a but confidently of the other gender: a new person
    assert m.assign(tracklet(1, 3, range(70, 80), a, gender=0.05)) == 2
    # near a (and female, unlike person 2), but in camera 0 while a's camera-0 tracklet was there: one camera
    # cannot see one person twice at once
    assert m.assign(tracklet(0, 9, range(10, 15), a, gender=0.9)) == 3
    # too far from everyone: new
    assert m.assign(tracklet(0, 10, range(90, 95), [0, 0, 1, 0])) == 4
    assert m.assigned[(1, 1)] == 0 and len(m.people) == 5
    # the same camera later (a track the tracker broke): joins the nearest allowed person
    assert m.assign(tracklet(0, 11, range(100, 110), [1, 0.1, 0, 0], gender=0.7)) == 0
    assert m.candidates(tracklet(0, 12, range(200, 202), b))[0][1] == 1  # nearest first
    with pytest.raises(InvalidInputError, match="match_distance"):
        IdentityMatcher(match_distance=3.0)


# -- the example ------------------------------------------------------------------------------------------------------
def load_example(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_multicam_tracker_example_saves_tracks_and_people(small_model, runtime, scene, tmp_path):
    need_boxmot()
    from edgereid.retrieval.gallery import Gallery

    people, sequences = scene
    folders = [write_mot(s, tmp_path / f"cam{s.camera}") for s in sequences]
    out = tmp_path / "site.gallery"
    # match 2.0 (anything joins) and gender off: only "one camera cannot see one person twice at once" separates
    load_example("multicam_tracker").main([str(small_model), *map(str, folders), "-o", str(out), "--match", "2.0",
                                           "--gender-margin", "0"])
    g = Gallery.load(out)
    truth = {}
    for cam, s in enumerate(sequences):
        for t, rows in s.boxes.items():
            for pid, x1, y1, x2, y2 in rows:
                truth[(cam, t, round(x1, 1), round(y1, 1))] = (pid, (x1, y1, x2, y2))
    assert len(g) > 0.9 * len(truth) and (g.tracks >= 0).all() and set(g.cameras.tolist()) == {0, 1}
    by_track: dict = {}
    for i in range(len(g)):
        left, top, width, height = g.meta[i]["box"]
        pid, (x1, y1, x2, y2) = truth[(int(g.cameras[i]), int(g.times[i]), round(left, 1), round(top, 1))]
        by_track.setdefault((int(g.cameras[i]), int(g.tracks[i])), set()).add(int(g.ids[i]))
        if i % 25 == 0:  # the stored row is the crop's embedding
            crop = sequences[int(g.cameras[i])].frames[int(g.times[i])][int(y1):int(y2), int(x1):int(x2)]
            ref = runtime.infer([crop])
            np.testing.assert_allclose(g.embeddings[i], ref.embeddings[0], atol=1e-5)
            assert g.gender_prob[i] == pytest.approx(float(ref.gender_prob[0]), abs=1e-5)
    assert all(len(v) == 1 for v in by_track.values())  # a track keeps one person id
    # each camera sees three people at once at some point: they are three different people, in both cameras
    for cam in (0, 1):
        assert len({next(iter(v)) for (c, _), v in by_track.items() if c == cam}) >= 3


def test_benchmark_scores_on_a_hand_counted_example():
    from benchmarks.bench_multicam import score

    # (scene, camera, frame, true person, predicted id): person 0 in both cameras, 1 only in camera 0, 2 only in 1
    rows = [(0, 0, 1, 0, 5), (0, 0, 2, 0, 5), (0, 0, 3, 0, 6), (0, 0, 1, 1, 7), (0, 0, 2, 1, 7),
            (0, 1, 9, 0, 5), (0, 1, 10, 0, 5), (0, 1, 9, 2, 8), (0, 1, 10, 2, -1)]
    s = score(rows)
    # one switch (5 -> 6); cross-camera pairs: 4 true and predicted same (2 x 2 of person 0 as id 5), 4 predicted
    # same, 3 x 2 = 6 truly same -> precision 1, recall 2/3; every person's majority id is its own
    assert s["id_switches"] == 1 and s["unassigned"] == 1 and s["detections"] == 9
    assert (s["pair_precision"], s["pair_recall"], s["pair_f1"]) == (1.0, 0.6667, 0.8)
    assert s["cross_camera_accuracy"] == 1.0 and s["ids_per_person"] == pytest.approx(4 / 3, abs=1e-3)
    # the same id on two people (7 for person 1 and person 2) makes both wrong
    s = score([r if r[3] != 2 else (*r[:4], 7) for r in rows])
    assert s["cross_camera_accuracy"] == pytest.approx(1 / 3, abs=1e-4)
