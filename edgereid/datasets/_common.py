"""Helpers shared by the readers: locating the data-set folder and listing image files."""
from __future__ import annotations

from pathlib import Path

from edgereid.errors import DatasetError
from edgereid.imageio import list_images

__all__ = ["list_images", "resolve_root", "unparsable_error"]


def resolve_root(root, name: str, required: tuple, candidates: tuple = ()) -> Path:
    """The folder holding `required` entries: `root` itself or one of its usual unzipped subfolders."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DatasetError(f"{name}: data-set folder {root} does not exist; pass the folder that holds "
                           f"{', '.join(required)}.")
    for folder in (root, *(root / c for c in candidates)):
        if folder.is_dir() and all((folder / r).exists() for r in required):
            return folder
    missing = [r for r in required if not (root / r).exists()]
    tried = f" (also looked in {', '.join(candidates)})" if candidates else ""
    raise DatasetError(f"{name}: {root} is missing {', '.join(missing)}{tried}; pass the folder that holds "
                       f"{', '.join(required)} as in the original {name} download.")


def unparsable_error(name: str, folder, bad: list, expected: str) -> DatasetError:
    """A DatasetError naming the first few files whose names do not follow the layout."""
    shown = ", ".join(str(b) for b in bad[:3]) + (f" (+{len(bad) - 3} more)" if len(bad) > 3 else "")
    return DatasetError(f"{name}: {len(bad)} file name(s) in {folder} do not match {expected}: {shown}; "
                        f"rename or remove them.")
