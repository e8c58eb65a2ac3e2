"""Reading split CSVs of a data root into MONAI-style data lists.

The CSVs follow the authors' published format (their repository's ``Data/splits/``): an unnamed
index column, ``img_name, age, label, img_path, mask_path, seg_path`` (plus dataset-specific
demographic columns), with paths relative to the data root and a leading ``/``. The authors'
files name T1 images; for T2 their loader keeps only the IXI subjects listed in ``avail_t2.csv``
and replaces ``t1`` by ``t2`` in ``img_path``. :func:`read_split_csv` does the same.

Example:
    >>> items = read_split_csv("root/splits/IXI_train_fold0.csv", "root")  # doctest: +SKIP
    >>> items[0]["image"]  # doctest: +SKIP
    '/data/root/Train/ixi/t2/IXI002-Guys-0828_t2.nii.gz'
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

from pddpm_monai.utils import InputError

__all__ = ["REQUIRED_COLUMNS", "SPLIT_NAMES", "split_path", "read_split_csv"]

#: columns every split CSV must have
REQUIRED_COLUMNS = ("img_name", "label", "img_path", "mask_path", "seg_path")

#: split file stems of a data root (``<root>/splits/<name>.csv``)
SPLIT_NAMES = (
    *(f"IXI_train_fold{i}" for i in range(5)),
    *(f"IXI_val_fold{i}" for i in range(5)),
    "IXI_test",
    "Brats21_val",
    "Brats21_test",
    "MSLUB_val",
    "MSLUB_test",
)


def split_path(data_root: str | os.PathLike, name: str) -> Path:
    """The CSV of split ``name`` (e.g. ``"IXI_train_fold0"``) in ``data_root``; one-line error if absent."""
    root = Path(data_root)
    path = root / "splits" / f"{name}.csv"
    if not path.is_file():
        if not (root / "splits").is_dir():
            raise InputError(root, "data root has no splits/ folder: run `pddpm splits --data-root` first")
        raise InputError(path, f"split '{name}' not found in the data root")
    return path


def _available_t2(csv_path: Path) -> set[str] | None:
    """Names in the authors' ``avail_t2.csv`` beside ``csv_path`` (their IXI T2 filter), if present."""
    avail = csv_path.parent / "avail_t2.csv"
    if not avail.is_file():
        return None
    with avail.open(newline="") as f:
        rows = list(csv.reader(f))
    return {row[-1].replace("t2", "t1") for row in rows[1:] if row}


def _resolve(data_root: Path, value: str | None) -> str | None:
    if value is None or str(value).strip() in ("", "nan", "None"):
        return None
    return str(data_root / str(value).lstrip("/"))


def _parse_age(value: str | None) -> float | None:
    try:
        return float(value) if value not in (None, "") else None
    except ValueError:
        return None


def read_split_csv(
    csv_path: str | os.PathLike,
    data_root: str | os.PathLike,
    *,
    modality: str = "t2",
    check_files: bool = True,
) -> list[dict[str, Any]]:
    """Read a split CSV into a list of dicts with keys ``name, age, label, image, mask, seg``.

    Args:
        csv_path: the split CSV (our own or the authors' published one).
        data_root: the data root that the CSV's paths are relative to.
        modality: image modality to load. The authors' CSVs name ``t1`` images; with ``"t2"`` the
            ``t1`` in ``img_path`` is replaced by ``t2`` and, when ``avail_t2.csv`` is present, only
            subjects listed there are kept (as their loader does).
        check_files: raise :class:`InputError` when a listed image/mask/seg file does not exist.

    Returns:
        one dict per subject; ``image``/``mask``/``seg`` are absolute path strings (``seg`` is
        ``None`` for healthy subjects), ``label`` is 0 (healthy) or 1 (unhealthy), ``age`` a float or None.
    """
    csv_path, data_root = Path(csv_path), Path(data_root)
    if not csv_path.is_file():
        raise InputError(csv_path, "split CSV not found")
    with csv_path.open(newline="") as f:
        reader = csv.DictReader(f)
        columns = reader.fieldnames or []
        missing = [c for c in REQUIRED_COLUMNS if c not in columns]
        if missing:
            raise InputError(csv_path, f"split CSV lacks column(s) {', '.join(missing)}")
        rows = list(reader)
    keep = _available_t2(csv_path) if modality == "t2" else None
    items = []
    for row in rows:
        img_path = row["img_path"]
        if modality != "t1" and "/t1/" in img_path:
            if keep is not None and row["img_name"] not in keep and "IXI" in row["img_name"]:
                continue
            img_path = img_path.replace("t1", modality)
        item = {
            "name": row["img_name"].replace(f"_{modality}.nii.gz", "").replace("_t1.nii.gz", ""),
            "age": _parse_age(row.get("age")),
            "label": int(float(row["label"])) if row["label"] not in ("", None) else 0,
            "image": _resolve(data_root, img_path),
            "mask": _resolve(data_root, row["mask_path"]),
            "seg": _resolve(data_root, row["seg_path"]),
        }
        if item["image"] is None:
            raise InputError(csv_path, f"row '{row['img_name']}' has an empty img_path")
        if check_files:
            for key in ("image", "mask", "seg"):
                if item[key] is not None and not Path(item[key]).is_file():
                    raise InputError(csv_path, f"{key} of '{item['name']}' not found: {item[key]}")
        items.append(item)
    return items
