"""PETA's own label files as a gender source: `<subset>/archive/Label.txt` (a line per person: the id, then
attribute words; `personalMale` or `personalFemale` gives the gender) beside the subset's images. The other
words are the person's attributes (present = positive, absent = negative), carried in each record.

Images belong to a labelled id by their leading number (`0053_001.jpg`, `100_3_FRAME_26_RGB.bmp` -> 53, 100;
zero-padding may differ between the file and Label.txt); the CUHK subset labels file names (`0606.png`).
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Sequence

from edgereid.datasets._common import list_images
from edgereid.datasets.records import GenderRecord
from edgereid.errors import DatasetError

LABEL_FILE = "Label.txt"
# Label.txt words whose name in the 35-attribute protocol (edgereid.attributes.PETA_35) is spelled otherwise: a
# record carries both spellings
WORD_ALIASES = {"footwearSneakers": "footwearSneaker"}
SUBSETS = ("3DPeS", "CAVIAR4REID", "CUHK", "GRID", "MIT", "PRID", "SARC3D", "TownCentre", "VIPeR", "i-LID")


def subset_folder(folder: Path) -> Path | None:
    """The folder holding a subset's Label.txt and images: `folder/archive` or `folder` itself."""
    for candidate in (folder / "archive", folder):
        if (candidate / LABEL_FILE).is_file():
            return candidate
    return None


def read_label_words(label_file: Path) -> dict:
    """{key: (gender 1 female / 0 male / None, attribute words, line number)} of every line; a key is an int
    id, or a file name where Label.txt names files. The words are the attributes that hold for the person (PETA
    lists positives only)."""
    people = {}
    for n, line in enumerate(label_file.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        words = line.split()
        if not words:
            continue
        female, male = "personalFemale" in words[1:], "personalMale" in words[1:]
        if female and male:
            raise DatasetError(f"{label_file} line {n}: id {words[0]!r} is labelled both personalMale and "
                               f"personalFemale; fix or remove the line.")
        key = words[0] if "." in words[0] else _number(words[0], label_file, n)
        gender = int(female) if female or male else None
        found = set(words[1:])
        people[key] = (gender, tuple(sorted(found | {WORD_ALIASES[w] for w in found if w in WORD_ALIASES})), n)
    return people


def read_labels(label_file: Path) -> dict:
    """{key: 1 female / 0 male}; a key is an int id, or a file name where Label.txt names files."""
    labels, unknown = {}, []
    for key, (gender, _, line) in read_label_words(label_file).items():
        if gender is None:
            unknown.append(line)  # a person PETA gives no gender (PRID has one): not a gender sample
            continue
        labels[key] = gender
    if unknown:
        warnings.warn(f"{label_file}: lines {unknown[:5]}{' ...' if len(unknown) > 5 else ''} give no gender "
                      f"(neither personalMale nor personalFemale); their images are left out.", stacklevel=2)
    if not labels:
        raise DatasetError(f"{label_file} holds no labelled ids.")
    return labels


def _number(text: str, source: Path, line: int) -> int:
    try:
        return int(text)
    except ValueError:
        raise DatasetError(f"{source} line {line}: id {text!r} is neither a number nor a file name.") from None


def image_key(path: Path):
    """The Label.txt key an image belongs to: its leading number, or None when the name has none."""
    head = path.stem.split("_")[0]
    return int(head) if head.isdigit() else None


def load_peta_subset(folder) -> list:
    """GenderRecords of one PETA subset folder (`<subset>/` or `<subset>/archive/`)."""
    folder = Path(folder).expanduser()
    base = subset_folder(folder)
    if base is None:
        raise DatasetError(f"{folder} is not a PETA subset: no {LABEL_FILE} in it or in {folder / 'archive'}.")
    labels = read_labels(base / LABEL_FILE)
    # the attribute words as (word, 1) pairs: PETA lists positives, so any other name is a negative
    words = {k: tuple((w, 1) for w in ws) for k, (_, ws, _) in read_label_words(base / LABEL_FILE).items()}
    by_name = any(isinstance(k, str) for k in labels)
    subset = base.parent.name if base.name == "archive" else base.name
    records, unlabelled = [], 0
    for path in list_images(base):
        key = path.name if by_name else image_key(path)
        if key in labels:
            records.append(GenderRecord(str(path.resolve()), labels[key], person=f"{subset}/{key}",
                                        attributes=words[key], attributes_complete=True))
        else:
            unlabelled += 1
    if not records:
        raise DatasetError(f"{base}: none of its {unlabelled} images belongs to an id of {base / LABEL_FILE}; "
                           f"images are matched by their leading number (or by file name for CUHK).")
    return records


def peta_subsets(root) -> dict:
    """{subset name: folder} of a PETA tree (`PETA dataset/<subset>/archive/Label.txt`) or one subset."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DatasetError(f"PETA folder {root} does not exist.")
    if subset_folder(root) is not None:
        return {root.name if root.name != "archive" else root.parent.name: root}
    found = {sub.name: sub for sub in sorted(root.iterdir()) if sub.is_dir() and subset_folder(sub) is not None}
    if not found:
        raise DatasetError(f"{root} holds no PETA subset (folders with archive/{LABEL_FILE}); pass the "
                           f"'PETA dataset' folder or one subset.")
    return found


def load_peta(root, subsets: Sequence[str] | None = None, exclude: Sequence[str] = ()) -> list:
    """GenderRecords (1 = female) of the chosen PETA subsets under `root` (all of them by default)."""
    found = peta_subsets(root)
    lower = {k.lower(): k for k in found}
    wanted = list(found) if subsets is None else list(subsets)
    missing = [s for s in [*wanted, *exclude] if s.lower() not in lower]
    if missing:
        raise DatasetError(f"PETA subsets {missing} are not under {root}; it holds {', '.join(found)}.")
    drop = {lower[s.lower()] for s in exclude}
    records = []
    for name in (lower[s.lower()] for s in wanted):
        if name not in drop:
            records += load_peta_subset(found[name])
    if not records:
        raise DatasetError(f"no PETA subset left under {root} after excluding {sorted(drop)}.")
    return records
