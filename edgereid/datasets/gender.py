"""Gender label readers: `path,label` lists and PETA/RAP/PA-100K-style attribute tables (1 = female)."""
from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Sequence

from edgereid.errors import DatasetError

from edgereid.datasets.attribute_labels import parse_attribute_value
from edgereid.datasets.records import GenderRecord

FEMALE_WORDS = {"1", "female", "f", "woman", "w"}
MALE_WORDS = {"0", "male", "m", "man"}
IMAGE_COLUMNS = ("image", "path", "image_path", "filename", "file", "img", "image_name", "imagename", "name")
# Checked in this order; RAP v1 spells its column "Femal". Columns naming "male" are inverted by default.
GENDER_COLUMNS = ("female", "femal", "personalfemale", "attr_female", "gender", "sex", "label",
                  "personalmale", "male")


def parse_label(value: str) -> int:
    """1 for female, 0 for male; accepts 0/1 (also 0.0/1.0), female/male, F/M, woman/man."""
    v = value.strip().lower()
    try:
        v = str(int(float(v))) if v.replace(".", "", 1).lstrip("-").isdigit() else v
    except ValueError:
        pass
    if v in FEMALE_WORDS:
        return 1
    if v in MALE_WORDS:
        return 0
    raise ValueError(value)


def _base_dir(path: Path, image_root) -> Path:
    return Path(image_root).expanduser() if image_root is not None else path.parent


def _check_files(records: list, source: Path) -> list:
    if not records:
        raise DatasetError(f"gender list {source} holds no labelled images.")
    missing = [r.path for r in records if not Path(r.path).is_file()]
    if missing:
        raise DatasetError(f"gender list {source}: {len(missing)} image(s) not found, e.g. {missing[0]}; "
                           f"relative paths resolve against the list's folder unless image_root is given.")
    return records


def _read_text(path: Path) -> str:
    path = Path(path).expanduser()
    if not path.is_file():
        raise DatasetError(f"gender list {path} does not exist; pass a CSV/TXT of `path,label` lines "
                           f"or an attribute table with a header.")
    return path.read_text(encoding="utf-8-sig")


def _split_line(line: str) -> list:
    for sep in (",", "\t", ";"):
        if sep in line:
            return [f.strip() for f in line.split(sep)]
    return line.rsplit(None, 1)  # whitespace: the path may itself contain spaces


def _has_attribute_columns(text: str) -> bool:
    """Whether the first line is a `path,label,...` header with more columns (attributes)."""
    first = next((ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")), "")
    fields = [f.strip().lower() for f in first.split(",")]
    return len(fields) > 2 and fields[0] in IMAGE_COLUMNS and fields[1] in GENDER_COLUMNS


def load_gender_list(path, image_root=None) -> list:
    """Read `path,label` lines (comma, tab, ';' or space separated; optional header; '#' comments). A header
    `path,label,<attribute>,...` adds attribute columns (1/0, empty or -1 = unknown) to the records."""
    path = Path(path).expanduser()
    text, base = _read_text(path), _base_dir(path, image_root)
    if _has_attribute_columns(text):  # `path,label,attr1,...` (the generated sets write their attributes so)
        return load_attribute_table(path, image_root=image_root)
    records, bad = [], []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = _split_line(line.strip())
        try:
            if len(fields) != 2:
                raise ValueError(line)
            label = parse_label(fields[1])
        except ValueError:
            if not records and not bad:
                continue  # a header line such as "path,label"
            bad.append(f"line {lineno}: {line.strip()[:80]}")
            continue
        records.append(GenderRecord(str((base / fields[0]).resolve()), label))
    if bad:
        raise DatasetError(f"gender list {path}: {len(bad)} line(s) are not `path,label` with label 0/1, "
                           f"male/female or M/F, e.g. {bad[0]}.")
    return _check_files(records, path)


def _pick(header: list, wanted, known: tuple, what: str, source: Path) -> str:
    lower = {h.strip().lower(): h for h in header}
    if wanted is not None:
        if wanted in header:
            return wanted
        if wanted.lower() in lower:
            return lower[wanted.lower()]
        raise DatasetError(f"attribute table {source} has no column {wanted!r}; columns: {', '.join(header)}.")
    for name in known:
        if name in lower:
            return lower[name]
    raise DatasetError(f"attribute table {source}: cannot tell which column is the {what}; columns: "
                       f"{', '.join(header)}. Name it explicitly.")


def load_attribute_table(path, gender_column=None, invert=None, image_column=None, image_root=None) -> list:
    """Read a CSV attribute table with a header; `gender_column` by name (e.g. Female, personalMale).

    `invert` flips the column (1 - value); by default it is on for columns that name males
    (`personalMale`, `Male`) so the result is always 1 = female. Every other column whose values are all 1/0
    (empty or -1 = unknown) is an attribute: its labels go into `GenderRecord.attributes`.
    """
    path = Path(path).expanduser()
    text, base = _read_text(path), _base_dir(path, image_root)
    try:
        dialect = csv.Sniffer().sniff(text[:4096], delimiters=",\t;")
    except csv.Error:
        dialect = csv.excel
    reader = csv.DictReader(io.StringIO(text), dialect=dialect)
    header = reader.fieldnames or []
    if len(header) < 2:
        raise DatasetError(f"attribute table {path} needs a header row with an image column and a gender column.")
    gcol = _pick(header, gender_column, GENDER_COLUMNS, "gender column (rename it to one of "
                 f"{', '.join(c for c in GENDER_COLUMNS if c != 'label')}, or pass gender_column= to "
                 "load_attribute_table / load_gender_dataset)", path)
    icol = _pick(header, image_column, IMAGE_COLUMNS + (header[0].strip().lower(),), "image column", path)
    if invert is None:
        name = gcol.strip().lower()
        invert = "male" in name and "female" not in name
    rows = list(reader)
    attr_cols = _attribute_columns(rows, [h for h in header if h not in (gcol, icol)])
    records, bad = [], []
    for rowno, row in enumerate(rows, 2):
        try:
            label = parse_label(row[gcol] or "")
        except ValueError:
            bad.append(f"row {rowno}: {gcol}={row[gcol]!r}")
            continue
        attrs = tuple((c.strip(), v) for c in attr_cols if (v := parse_attribute_value(row[c] or "")) >= 0)
        records.append(GenderRecord(str((base / row[icol].strip()).resolve()), 1 - label if invert else label,
                                    attributes=attrs))
    if bad:
        raise DatasetError(f"attribute table {path}: {len(bad)} row(s) have a gender value that is not "
                           f"0/1, male/female or M/F, e.g. {bad[0]}.")
    return _check_files(records, path)


def _attribute_columns(rows: list, columns: list) -> list:
    """The columns that are binary attributes: every value 1/0 (empty or -1 = unknown). Other columns (ages,
    free text) are not attributes and are skipped."""
    def binary(col: str) -> bool:
        try:
            for row in rows:
                parse_attribute_value(row.get(col) or "")
        except ValueError:
            return False
        return True

    return [c for c in columns if c and c.strip() and binary(c)]


def load_gender_dataset(path, subsets: Sequence[str] | None = None, exclude: Sequence[str] = (), **kwargs) -> list:
    """Auto-detect: a PETA folder (its Label.txt files; `subsets`, `exclude` pick subsets), an attribute table
    when the header has a gender column other than `label`, else a `path,label` list."""
    if Path(path).expanduser().is_dir():
        from edgereid.datasets.peta import load_peta

        return load_peta(path, subsets=subsets, exclude=exclude)
    if subsets or exclude:
        raise DatasetError(f"{path}: subsets / exclude pick subsets of a PETA folder; {path} is a file. Pass the "
                           f"PETA folder, or drop them.")
    text = _read_text(Path(path))
    first = next((ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")), "")
    header = {f.strip().lower() for f in _split_line(first)} if first else set()
    table_cols = set(GENDER_COLUMNS) - {"label"}
    if kwargs.get("gender_column") or header & table_cols or len(_split_line(first)) > 2:
        return load_attribute_table(path, **kwargs)
    return load_gender_list(path, image_root=kwargs.get("image_root"))
