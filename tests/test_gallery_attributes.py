"""Search by description: attribute storage and filters on Gallery, GalleryStore (SQLite) and MilvusGallery
(milvus-lite), checked against a brute-force expectation written here; files and stores of earlier layouts; `--where`
words and `edgereid search --where` on a gallery file."""
from __future__ import annotations

import json
import sqlite3
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from conftest import make_crops
from edgereid.errors import GalleryFileError, InvalidInputError
from edgereid.retrieval import attribute_filter as af
from edgereid.retrieval.gallery import Gallery
from edgereid.retrieval.gallery_format import write_gallery_file
from edgereid.retrieval.store import GalleryStore

NAMES = ("carryingBackpack", "upperBodyJacket", "upperBodyRed", "lowerBodyRed", "hairLong")
N, DIM, WITH_ATTRS = 48, 8, 40  # rows WITH_ATTRS.. are added in a second add() without attributes
KINDS = ["gallery", "store", "milvus"]


def data():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(N, DIM)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    p = rng.random((N, len(NAMES)))
    p[::7] = np.nan  # entries whose crop gave no attributes: unknown
    p[1, 0], p[2, 0], p[3, 0] = 0.4990, 0.5, 0.5019  # either side of the 0.5 threshold
    p[WITH_ATTRS:] = np.nan
    gp = rng.random(N).astype(np.float32)
    gp[::9] = np.nan
    cols = dict(ids=np.arange(N), cameras=np.arange(N) % 4, gender_prob=gp, times=np.arange(N, dtype=float),
                meta=[{"i": i} for i in range(N)])
    q = x[:3] + 0.3 * rng.normal(size=(3, DIM)).astype(np.float32)
    return x, cols, p, q


def fill(g) -> None:
    x, cols, p, _ = data()
    first = {k: v[:WITH_ATTRS] for k, v in cols.items()}
    g.add(x[:WITH_ATTRS], **first, attributes=p[:WITH_ATTRS])
    g.add(x[WITH_ATTRS:], **{k: v[WITH_ATTRS:] for k, v in cols.items()})  # attributes=None: unknown


def milvus_class():
    pytest.importorskip("pymilvus", reason="pymilvus + milvus-lite are in the cpu extra; CI installs them")
    pytest.importorskip("milvus_lite", reason="pymilvus + milvus-lite are in the cpu extra; CI installs them")
    from edgereid.retrieval.milvus_gallery import MilvusGallery
    return MilvusGallery


def empty(kind: str, tmp_path, names=NAMES):
    if kind == "gallery":
        return Gallery(dim=DIM, index="exact", attribute_names=names)
    if kind == "store":
        return GalleryStore(tmp_path / "site.sqlite", dim=DIM, dtype="float32", attribute_names=names)
    return milvus_class()(str(tmp_path / "site.milvus.db"), dim=DIM, collection="attrs", attribute_names=names)


@pytest.fixture(params=KINDS)
def gallery(request, tmp_path):
    g = empty(request.param, tmp_path)
    fill(g)
    yield g
    if hasattr(g, "close"):
        g.close()


def brute(wanted: dict, threshold=0.5, camera=None, time_range=None) -> tuple:
    """Expected (ids, distances) of a description search, from the raw probabilities and their uint8 codes."""
    _, cols, p, _ = data()
    gp = cols["gender_prob"].astype(np.float64)
    keep = np.ones(N, bool)
    logs = []
    for name, want in wanted.items():
        if name in ("female", "male"):
            female = want == (name == "female")
            keep &= ~np.isnan(gp) & ((gp >= 0.5) == female)
            logs.append(np.log(np.where(female, gp, 1 - gp)))
        else:
            code = np.rint(np.nan_to_num(p[:, NAMES.index(name)]) * 255)
            keep &= ~np.isnan(p[:, 0]) & ((code / 255 >= threshold) == want)
            logs.append(np.log(np.maximum(code / 255 if want else 1 - code / 255, 1 / 510)))
    if camera is not None:
        keep &= np.isin(cols["cameras"], camera)
    if time_range is not None:
        keep &= cols["times"] >= time_range[0]
    d = -np.mean(logs, axis=0) if logs else np.zeros(N)
    rows = np.flatnonzero(keep)
    order = rows[np.lexsort((rows, d[rows]))]
    return order.tolist(), d[order]


QUERIES = [({"carryingBackpack": True}, {}),
           ({"female": True, "carryingBackpack": True, "upperBodyRed": True}, {}),
           ({"male": True, "hairLong": False}, {"camera": [1, 2]}),
           ({"upperBodyJacket": True, "lowerBodyRed": False}, {"time_range": (10, None)}),
           ({"upperBodyJacket": True}, {"attribute_threshold": 0.7}),
           ({}, {"camera": 3})]


@pytest.mark.parametrize("wanted, options", QUERIES, ids=[str(w) + str(o) for w, o in QUERIES])
def test_description_search_is_the_same_on_every_tier_and_equals_brute_force(gallery, wanted, options):
    k = 60  # more than pass any filter: the whole ranking is compared
    ids, dist = brute(wanted, options.get("attribute_threshold", 0.5), options.get("camera"),
                      options.get("time_range"))
    hits = gallery.search(None, k=k, attributes=wanted, **options)
    assert [h.id for h in hits] == ids and len(ids) > 0
    np.testing.assert_allclose([h.distance for h in hits], dist, atol=1e-9)
    # query_embeddings defaults to None
    assert [h.key for h in gallery.search(k=3, attributes=wanted, **options)] == [h.key for h in hits[:3]]
    _, _, p, q = data()
    for h in hits:  # a description hit passes the filters, so its attributes are known (unless none asked)
        if h.attributes is not None:
            assert list(h.attributes) == list(NAMES)
            np.testing.assert_allclose(list(h.attributes.values()), p[h.id], atol=1 / 510 + 1e-7)
        else:
            assert not any(n in NAMES for n in wanted) and np.isnan(p[h.id]).all()
    # with an image query: the same filter, ranked by embedding distance = a plain search of the passing rows
    x, cols, _, _ = data()
    plain = Gallery(dim=DIM, index="exact")
    plain.add(x[ids], ids=np.asarray(ids), cameras=cols["cameras"][ids])
    want = plain.search(q, k=5)
    got = gallery.search(q, k=5, attributes=wanted, **options)
    assert [[h.id for h in r] for r in got] == [[h.id for h in r] for r in want]
    for a, b in zip(sum(want, []), sum(got, [])):
        assert abs(a.distance - b.distance) < 1e-4


def test_searches_without_attributes_are_unchanged_and_unknown_entries_show_as_none(gallery):
    x, cols, _, q = data()
    reference = Gallery(dim=DIM, index="exact")  # no attribute names at all
    reference.add(x, **cols)
    for options in ({}, {"gender": "female"}, {"camera": [1, 3], "time_range": (5, 40)}):
        want, got = reference.search(q, k=6, **options), gallery.search(q, k=6, **options)
        assert [[h.id for h in r] for r in got] == [[h.id for h in r] for r in want]
    everything = gallery.search(np.zeros(DIM, np.float32), k=N)
    assert {h.id for h in everything if h.attributes is None} == set(range(0, N, 7)) | set(range(WITH_ATTRS, N))
    assert gallery.attribute_names == NAMES


def test_unknown_names_raise_with_the_closest_name_and_the_list(gallery):
    with pytest.raises(InvalidInputError, match=r"unknown attribute 'carryingBackpak'; did you mean "
                                                r"'carryingBackpack'\?.*upperBodyJacket, upperBodyRed"):
        gallery.search(None, attributes={"carryingBackpak": True})
    with pytest.raises(InvalidInputError, match="must be True or False"):
        gallery.search(None, attributes={"hairLong": 1})
    with pytest.raises(InvalidInputError, match="rerank=True needs query_embeddings"):
        gallery.search(None, rerank=True, attributes={"hairLong": True})
    with pytest.raises(InvalidInputError, match=r"attributes has 4 columns but the gallery has 5 attribute names"):
        gallery.add(np.ones((2, DIM), np.float32), attributes=np.full((2, 4), 0.5))
    with pytest.raises(InvalidInputError, match=r"probabilities in \[0, 1\]"):
        gallery.add(np.ones((1, DIM), np.float32), attributes=[[0.2, 1.5, 0.1, 0.1, 0.1]])
    assert len(gallery) == N


@pytest.mark.parametrize("kind", ["store", "milvus"])
def test_reopening_with_other_attribute_names_raises_naming_both(kind, tmp_path):
    g = empty(kind, tmp_path)
    fill(g)
    g.close()
    with pytest.raises(InvalidInputError, match=r"holds attributes \['carryingBackpack'.*\(5\), not \['hat'\] \(1\)"):
        empty(kind, tmp_path, names=("hat",))
    again = empty(kind, tmp_path, names=None)  # None: the stored names
    try:
        assert again.attribute_names == NAMES and len(again) == N
        ids, dist = brute({"upperBodyRed": True, "female": False})
        hits = again.search(None, k=N, attributes={"upperBodyRed": True, "female": False})
        assert [h.id for h in hits] == ids
        np.testing.assert_allclose([h.distance for h in hits], dist, atol=1e-9)
    finally:
        again.close()


def test_gallery_file_and_encoded_form_carry_the_attributes(tmp_path):
    g = empty("gallery", tmp_path)
    fill(g)
    g.save(tmp_path / "site.gallery")
    back = Gallery.load(tmp_path / "site.gallery")
    assert back.attribute_names == NAMES
    assert back._attr.tobytes() == g._attr.tobytes() and back._attr_known.tolist() == g._attr_known.tolist()
    enc = g.to_encoded()
    assert enc.attributes.dtype == np.uint8 and enc.attributes.shape == (N, len(NAMES))
    again = Gallery.from_encoded(**vars(enc.take(slice(5, 10))))
    np.testing.assert_array_equal(again.attributes, g.attributes[5:10])  # NaN rows compare equal here
    np.testing.assert_array_equal(np.isnan(g.attributes).all(axis=1), ~g._attr_known)
    assert g.bytes_per_entry == Gallery(dim=DIM).bytes_per_entry + len(NAMES) + 1
    # another gallery's rows: same names append as stored, a gallery without names adds unknown rows
    other = Gallery(dim=DIM)
    other.add(np.ones((2, DIM), np.float32))
    back.extend(other)
    assert len(back) == N + 2 and not back._attr_known[-2:].any()
    with pytest.raises(InvalidInputError, match="holds attributes"):
        back.extend(Gallery(dim=DIM, attribute_names=("hat",)))


def test_a_gallery_file_written_before_attributes_opens_and_a_newer_layout_is_refused(tmp_path):
    x, cols, _, q = data()
    old = Gallery(dim=DIM)
    old.add(x, **cols)
    enc = old.to_encoded()  # the sections and header exactly as earlier releases wrote them
    header = {"dim": DIM, "dtype": "float32", "metric": "euclidean", "count": N}
    arrays = {name: getattr(enc, name) for name in ("embeddings", "ids", "cameras", "gender_prob", "times", "tracks")}
    arrays = {"embeddings": arrays.pop("embeddings"), "scale": np.empty(0, np.float32), **arrays,
              "meta": np.frombuffer(json.dumps(enc.meta).encode(), np.uint8)}
    write_gallery_file(tmp_path / "old.gallery", header, arrays)
    g = Gallery.load(tmp_path / "old.gallery")
    assert g.attribute_names == () and len(g) == N
    assert [h.id for h in g.search(q[0], k=4)] == [h.id for h in old.search(q[0], k=4)]
    assert all(h.attributes is None for h in g.search(q[0], k=4))
    assert [h.id for h in g.search(None, k=N, attributes={"female": True})] == brute({"female": True})[0]
    with pytest.raises(InvalidInputError, match="holds no attributes"):
        g.search(None, attributes={"hairLong": True})
    write_gallery_file(tmp_path / "new.gallery", {**header, "layout": 3}, arrays)
    with pytest.raises(GalleryFileError, match="layout 3.*upgrade edgereid"):
        Gallery.load(tmp_path / "new.gallery")


def test_a_version_2_store_opens_learns_names_and_mixes_old_and_new_entries(tmp_path):
    """Version-2 tables as earlier releases wrote them (no attribute columns), built by hand."""
    from test_gallery_store_layout import write_v2_store

    path = tmp_path / "v2.sqlite"
    x, cols, p, _ = data()
    old = Gallery(dim=DIM)
    old.add(x[:10], **{k: v[:10] for k, v in cols.items()})
    write_v2_store(path, old.to_encoded(), [(0, 10, 0)], next_row=11)
    with GalleryStore(path) as s:  # opened as before: no names, the same entries
        assert s.attribute_names == () and s.gallery.ids.tolist() == list(range(10))
    reader = GalleryStore(path)
    with GalleryStore(path, attribute_names=NAMES) as s:  # learns the names; old entries stay unknown
        s.add(x[10:20], **{k: v[10:20] for k, v in cols.items()}, attributes=p[10:20])
        hits = s.search(None, k=N, attributes={"hairLong": True})
        assert [h.id for h in hits] == [i for i in brute({"hairLong": True})[0] if 10 <= i < 20]
    reader.refresh()  # another connection picks up the names and the new entries
    assert reader.attribute_names == NAMES and len(reader) == 20
    assert [h.id for h in reader.search(None, k=N, attributes={"hairLong": True})] == [h.id for h in hits]
    reader.close()
    with sqlite3.connect(path) as con:
        assert con.execute("SELECT value FROM store_info WHERE key='version'").fetchone()[0] == "3"


def test_a_milvus_collection_created_before_attributes_opens_without_them(tmp_path):
    MilvusGallery = milvus_class()
    from pymilvus import DataType, MilvusClient

    uri = str(tmp_path / "old.milvus.db")
    client = MilvusClient(uri=uri)  # the schema earlier releases created: no attributes field
    schema = client.create_schema(auto_id=True, enable_dynamic_field=False)
    schema.add_field("pk", DataType.INT64, is_primary=True)
    schema.add_field("embedding", DataType.FLOAT_VECTOR, dim=DIM)
    for name in ("pid", "camera", "track"):
        schema.add_field(name, DataType.INT64)
    schema.add_field("gender_prob", DataType.FLOAT)
    schema.add_field("time", DataType.DOUBLE)
    schema.add_field("site", DataType.VARCHAR, max_length=256)
    schema.add_field("meta", DataType.VARCHAR, max_length=65535)
    params = client.prepare_index_params()
    params.add_index(field_name="embedding", index_type="FLAT", metric_type="L2")
    client.create_collection("old", schema=schema, index_params=params, consistency_level="Strong")
    client.close()
    x, cols, _, q = data()
    m = MilvusGallery(uri, collection="old")
    try:
        assert m.attribute_names == ()
        m.add(x, **cols)
        ref = Gallery(dim=DIM)
        ref.add(x, **cols)
        got = m.search(q[0], k=5, gender="male")
        assert [h.id for h in got] == [h.id for h in ref.search(q[0], k=5, gender="male")]
        assert all(h.attributes is None for h in got) and m.to_gallery().attribute_names == ()
        assert [h.id for h in m.search(None, k=N, attributes={"male": True})] == brute({"male": True})[0]
    finally:
        m.close()
    with pytest.raises(InvalidInputError, match="created before attributes"):
        MilvusGallery(uri, collection="old", attribute_names=NAMES)


def test_milvus_reopen_and_export_keep_the_attributes(tmp_path):
    m = empty("milvus", tmp_path)
    fill(m)
    m.close()
    from edgereid.retrieval.gallery_paths import open_gallery, save_gallery
    m = open_gallery(tmp_path / "site.milvus.db", collection="attrs")
    try:
        g = m.to_gallery()
        ref = empty("gallery", tmp_path)
        fill(ref)
        assert g.attribute_names == NAMES and g._attr.tobytes() == ref._attr.tobytes()
        assert g._attr_known.tolist() == ref._attr_known.tolist()
        assert save_gallery(m, tmp_path / "copy.sqlite") == N  # a new store learns the names
    finally:
        m.close()
    with GalleryStore(tmp_path / "copy.sqlite") as s:
        assert s.attribute_names == NAMES and s.gallery._attr.tobytes() == ref._attr.tobytes()


def test_uint8_codes_round_trip_within_half_a_step():
    p = np.linspace(0, 1, 100001)[:, None]
    codes, known = af.encode(p, len(p), ("a",))
    assert codes.dtype == np.uint8 and known.all()
    assert np.abs(af.decode(codes) - p).max() <= 1 / 510 + 1e-7
    # at the default threshold the quantisation never flips a decision
    c = af.code_threshold(0.5)
    assert ((codes[:, 0] >= c) == (p[:, 0] >= 0.5)).all()
    assert af.code_threshold(0.6) == 153 and af.code_threshold(0) == 0 and af.code_threshold(1) == 255


PETA = ("accessoryHat", "carryingBackpack", "upperBodyJacket", "upperBodyShortSleeve", "lowerBodyShorts",
        "lowerBodyShortSkirt", "personalMale", "upperBodyRed", "lowerBodyRed")


def test_where_words_map_to_names_by_exact_name_suffix_or_substring_and_negate():
    assert af.parse_where("female backpack no-jacket", PETA) == {"female": True, "carryingBackpack": True,
                                                                "upperBodyJacket": False}
    assert af.parse_where("MALE Not-Hat upperbodyred, skirt", PETA) == {
        "male": True, "accessoryHat": False, "upperBodyRed": True, "lowerBodyShortSkirt": True}
    assert af.parse_where("personalmale", PETA) == {"personalMale": True}  # an exact name beats "male"
    assert af.parse_where(["sleeve", "no-shorts"], PETA) == {"upperBodyShortSleeve": True, "lowerBodyShorts": False}
    with pytest.raises(InvalidInputError, match="'red' is ambiguous: it matches upperBodyRed, lowerBodyRed"):
        af.parse_where("red", PETA)
    with pytest.raises(InvalidInputError, match="'short' is ambiguous"):
        af.parse_where("short", PETA)
    with pytest.raises(InvalidInputError, match="'zebra' names no attribute.*accessoryHat, carryingBackpack"):
        af.parse_where("zebra", PETA)
    with pytest.raises(InvalidInputError, match="did you mean 'carryingBackpack'"):
        af.parse_where("carryingbackpak", PETA)
    with pytest.raises(InvalidInputError, match="and for its absence"):
        af.parse_where("backpack no-backpack", PETA)
    with pytest.raises(InvalidInputError, match="built without attributes"):
        af.parse_where("backpack", ())


def test_build_gallery_stores_the_runtime_attributes(tmp_path):
    from edgereid.cli.search_cmd import build_gallery

    folder = tmp_path / "crops"
    folder.mkdir()
    for i, img in enumerate(make_crops(3, seed=2, max_hw=(80, 40))):
        cv2.imwrite(str(folder / f"000{i + 1}_c{i + 1}s1_000001_01.png"), img)
    x, _, p, _ = data()

    def infer_files(files, progress=None):
        return SimpleNamespace(embeddings=x[:len(files)], gender_prob=np.full(len(files), 0.5, np.float32),
                               attributes=p[1:1 + len(files)].astype(np.float32), attribute_names=NAMES)
    g = build_gallery(SimpleNamespace(infer_files=infer_files), folder)
    assert g.attribute_names == NAMES and g.ids.tolist() == [1, 2, 3]
    np.testing.assert_allclose(g.attributes, p[1:4], atol=1 / 510 + 1e-7)
    without = build_gallery(SimpleNamespace(infer_files=lambda files, progress=None: SimpleNamespace(
        embeddings=x[:len(files)], gender_prob=np.zeros(len(files), np.float32), attributes=None)), folder)
    assert without.attribute_names == () and len(without) == 3


def test_cli_search_by_description_on_a_gallery_file(tmp_path, model_files, capsys):
    from edgereid.cli.main import main

    crops = make_crops(WITH_ATTRS, seed=9, max_hw=(80, 40))
    paths = []
    for i, img in enumerate(crops):
        paths.append(tmp_path / f"c{i}.png")
        cv2.imwrite(str(paths[-1]), img)
    x, cols, p, _ = data()
    g = Gallery(dim=DIM, attribute_names=NAMES)  # fake attributes: the test model has no attribute head
    g.add(x[:WITH_ATTRS], ids=cols["ids"][:WITH_ATTRS], gender_prob=cols["gender_prob"][:WITH_ATTRS],
          meta=[{"path": str(q)} for q in paths], attributes=p[:WITH_ATTRS])
    g.save(tmp_path / "site.gallery")
    html = tmp_path / "grid.html"
    main(["search", str(model_files["onnx"]), "--gallery", str(tmp_path / "site.gallery"), "--where",
          "female backpack", "-k", "3", "--save", str(html)])
    out = capsys.readouterr().out
    want = g.search(None, k=3, attributes={"female": True, "carryingBackpack": True})
    assert len(want) == 3
    lines = [line for line in out.splitlines() if line.startswith("  ")]
    assert [f"id={h.id} " in line for h, line in zip(want, lines)] == [True] * 3 and len(lines) == 3
    assert f"d={want[0].distance:.4f}" in lines[0] and "[female " in lines[0] and "carryingBackpack " in lines[0]
    assert "top: " in lines[0] and out.startswith("where: female carryingBackpack")
    page = html.read_text()
    assert page.count("<img") == 4 and "carryingBackpack 0." in page
    with pytest.raises(SystemExit) as done:
        main(["search", str(model_files["onnx"]), "--gallery", str(tmp_path / "site.gallery"), "--where", "red"])
    assert done.value.code == 2
    err = capsys.readouterr().err
    assert "'red' is ambiguous: it matches upperBodyRed, lowerBodyRed" in err
