"""`edgereid search`: the nearest gallery crops of query crops, or the gallery crops matching a description
(`--where "female backpack no-hat"`), printed and drawn as a PNG or HTML grid."""
from __future__ import annotations

import os
import re
from pathlib import Path

import click

from edgereid.cli.options import backend_option, threads_option

# Market-1501 / DukeMTMC style names carry the person id and camera: 0002_c1s1_000451_03.jpg
_ID_CAM = re.compile(r"^(-?\d+)_c(\d+)")


def id_and_camera(path: Path) -> tuple:
    """(id, camera) parsed from a Market-style file name, or (-1, -1) when the name does not say."""
    m = _ID_CAM.match(path.name)
    return (int(m.group(1)), int(m.group(2))) if m else (-1, -1)


def build_gallery(rt, folder: Path):
    """Embed every image under `folder` into a Gallery whose meta holds each file's path, with the model's
    attribute probabilities when it has an attribute head (`Output.attributes`; None: no attributes)."""
    from edgereid.imageio import list_images
    from edgereid.retrieval.gallery import Gallery

    files = list_images(folder, recursive=True)
    if not files:
        raise click.UsageError(f"no images found under {folder}")
    out = rt.infer_files(files, progress="gallery")
    # getattr: a Runtime or Output of a model without the optional head may not carry the fields at all
    attributes = getattr(out, "attributes", None)
    names = tuple(getattr(out, "attribute_names", ()) or getattr(rt, "attribute_names", ())) if attributes is not None \
        else ()
    g = Gallery(dim=out.embeddings.shape[1], attribute_names=names)
    idc = [id_and_camera(p) for p in files]
    g.add(out.embeddings, ids=[i for i, _ in idc], cameras=[c for _, c in idc], gender_prob=out.gender_prob,
          meta=[{"path": str(p)} for p in files], attributes=attributes if names else None)
    return g


def save_gallery_as(g, path: str, collection: str) -> None:
    """Write a gallery's rows to `path` (a Milvus collection, a GalleryStore or a .gallery file) and say so."""
    from edgereid.retrieval.gallery import Gallery
    from edgereid.retrieval.gallery_paths import as_memory_gallery, is_milvus_path, is_store_path, save_gallery
    from edgereid.retrieval.store_batches import read_info

    mem = as_memory_gallery(g)
    info = read_info(path) if is_store_path(path) else None
    n = save_gallery(mem, path, collection=collection, token=milvus_token())
    if is_milvus_path(path):  # Milvus sizes its own storage: there is no per-entry byte count to report
        click.echo(f"wrote {path} collection {collection!r} ({n} entries)")
        return
    # an existing store keeps its dtype
    stored = mem if info is None else Gallery(dim=mem.dim, dtype=info["dtype"], attribute_names=mem.attribute_names)
    converted = f", {len(mem)} new ones converted from {mem.dtype}" if stored.dtype != mem.dtype else ""
    click.echo(f"wrote {path} ({n} entries, {stored.bytes_per_entry} bytes each as {stored.dtype}{converted})")


def milvus_token() -> str:
    """A Milvus server's credentials ("user:password" or an API key) from $MILVUS_TOKEN; empty when unset."""
    return os.environ.get("MILVUS_TOKEN", "")


def check_gallery_arg(ctx, param, value: str) -> str:
    """--gallery must exist unless it is a Milvus server URI (which is only contacted when searched)."""
    from edgereid.retrieval.gallery_paths import is_milvus_server
    if not is_milvus_server(value) and not Path(value).exists():
        raise click.BadParameter(f"{value} does not exist (a crops folder, a saved gallery file, or a Milvus "
                                 f"http://, https://, tcp:// URI)", ctx=ctx, param=param)
    return value


GALLERY_HELP = ("A folder of crops (embedded now), a .gallery file saved earlier, a GalleryStore (.sqlite/.db), "
                "or a Milvus gallery: a milvus-lite file NAME.milvus.db or a server URI http://, https://, tcp:// "
                "(collection from --collection; server credentials from $MILVUS_TOKEN).")


@click.command("search")
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
# a str, not click.Path: Path() would fold the // of a server URI, and a server has no file to check
@click.option("--gallery", "gallery_path", required=True, metavar="PATH|URI", callback=check_gallery_arg,
              help=GALLERY_HELP)
@click.option("--query", "queries", multiple=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Query crop(s). Without --query, --where searches by description alone.")
@click.option("--where", default=None, metavar="WORDS",
              help='Attributes the hits must have, e.g. "female backpack upperBodyRed no-hat": each word is an '
                   'attribute name (case-insensitive) or the one name ending with / containing it; "no-" or "not-" '
                   "asks for its absence; female/male filter the gender. Probability >= 0.5 counts as present.")
@click.option("-k", "k", type=int, default=10, show_default=True)
@click.option("--rerank", is_flag=True, help="Rank by k-reciprocal re-ranked distance.")
@click.option("--gender", type=click.Choice(["female", "male"]), default=None, help="Only gallery entries of this gender.")
@click.option("--save", "save_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the result grid: .png, or .html for a page with the same content.")
@click.option("--save-gallery", default=None, metavar="PATH|URI",
              help="Save the gallery, to reuse with --gallery: NAME.milvus.db or a Milvus server URI appends to "
                   "the --collection, .sqlite/.db appends to a GalleryStore (converted to the store's dtype), any "
                   "other name writes a .gallery file.")
@click.option("--collection", default="edgereid", show_default=True, metavar="NAME",
              help="Milvus collection read by --gallery and written by --save-gallery when they are Milvus.")
@backend_option
@threads_option
def search(model, gallery_path, queries, where, k, rerank, gender, save_path, save_gallery, collection, backend,
           threads) -> None:
    """Find the K nearest gallery crops of each --query image with MODEL, or with --where alone the K gallery crops
    that best match a description (MODEL then only embeds a crops folder given as --gallery)."""
    from edgereid.retrieval.attribute_filter import parse_where
    from edgereid.retrieval.gallery_paths import is_milvus_path, open_gallery

    if not queries and where is None:
        raise click.UsageError("give --query image(s), a --where description, or both")
    if not queries and rerank:
        raise click.UsageError("--rerank needs --query: a search by description is ranked by attribute evidence")
    # a milvus-lite file is a folder on disk: the name decides before is_dir() takes it for crops
    folder = not is_milvus_path(gallery_path) and Path(gallery_path).is_dir()
    q = None
    if folder or queries:  # a description search of a saved gallery needs no model run
        from edgereid.runtime import Runtime
        with Runtime(model, backend=backend, threads=threads) as rt:
            g = build_gallery(rt, Path(gallery_path)) if folder else None
            q = rt.infer_files([str(p) for p in queries]) if queries else None
    if not folder:
        g = open_gallery(gallery_path, collection=collection, token=milvus_token())
    try:
        wanted = parse_where(where, g.attribute_names) if where is not None else None
        if save_gallery:
            save_gallery_as(g, save_gallery, collection)
        results = g.search(None if q is None else q.embeddings, k=k, rerank=rerank, gender=gender,
                           attributes=wanted)
    finally:
        if hasattr(g, "close"):  # GalleryStore / MilvusGallery: release the file (milvus-lite locks it)
            g.close()
    if q is None:
        report([(None, None, results)], wanted or {}, save_path)
    else:
        genders = q.gender_prob if q.gender_prob is not None else [None] * len(queries)  # no gender head
        report(list(zip(queries, genders, results)), wanted, save_path)


def attribute_notes(hit, wanted: dict | None, top: int = 0) -> str:
    """The --where words a hit matched, with its probabilities ("carryingBackpack .93 female .88"), then its `top`
    most probable other attributes."""
    probs = hit.attributes or {}
    words = []
    for name, want in (wanted or {}).items():
        p = hit.gender_prob if name in ("female", "male") else probs.get(name, float("nan"))
        p = 1 - p if name == "male" else p
        words.append(f"{'' if want else 'no-'}{name} {p:.2f}")
    others = sorted((p, n) for n, p in probs.items() if n not in (wanted or {}))[::-1][:top]
    if others:
        words.append("top: " + " ".join(f"{n} {p:.2f}" for p, n in others))
    return " ".join(words)


def report(rows: list, wanted: dict | None, save_path: Path | None) -> None:
    """Print each (query path or None, its P(female), hits) and draw the grid; a None query is the description."""
    import numpy as np

    from edgereid.imageio import read_image
    from edgereid.retrieval.search_report import CELL, Tile, save_grid_png, save_html

    top = 3 if rows and rows[0][0] is None else 0  # a description search also shows each hit's top attributes
    grid = []
    for path, prob, hits in rows:
        described = " ".join(f"{'' if v else 'no-'}{n}" for n, v in (wanted or {}).items())
        shown = "" if prob is None else f"\tP(female)={prob:.3f}"  # None: a model without a gender head
        click.echo(f"where: {described or '(no attribute)'}" if path is None else f"{path}{shown}")
        for rank, h in enumerate(hits, 1):
            at = (h.meta or {}).get("path", f"#{h.key}") if isinstance(h.meta, dict) else f"#{h.key}"
            notes = attribute_notes(h, wanted, top)
            click.echo(f"  {rank:3d}  d={h.distance:.4f}  id={h.id}  cam={h.camera}  "
                       f"P(female)={h.gender_prob:.3f}  {at}" + (f"  [{notes}]" if notes else ""))
        if save_path:
            tiles = [Tile(read_image(h.meta["path"]), f"#{r}", h.distance, h.gender_prob, h.id if h.id >= 0 else None,
                          attribute_notes(h, wanted, top))
                     for r, h in enumerate(hits, 1) if isinstance(h.meta, dict) and "path" in h.meta]
            if path is None:  # no query crop: a blank cell carrying the description
                query = Tile(np.full(CELL + (3,), 255, np.uint8), "description", notes=described)
            else:
                qid = id_and_camera(path)[0]
                query = Tile(read_image(path), "query", None, None if prob is None else float(prob),
                             qid if qid >= 0 else None)
            grid.append((query, tiles))
    if save_path:
        (save_html if save_path.suffix.lower() in (".html", ".htm") else save_grid_png)(save_path, grid)
        click.echo(f"wrote {save_path}")
