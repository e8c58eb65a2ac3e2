"""Reading split CSVs of a data root into MONAI-style data lists.

The CSVs follow the authors' published format (their repository's ``Data/splits/``): an unnamed
index column, ``img_name, age, label, img_path, mask_path, seg_path`` (plus dataset-specific
demographic columns), with paths relative to the data root and a leading ``/``. The authors'
files name T1 images; for T2 their loader keeps only the IXI subjects listed in ``avail_t2.csv``
and points ``img_path`` at the T2 file. :func:`read_split_csv` does the same, swapping only the
modality folder and the file suffix (``/t1/`` -> ``/t2/``, ``_t1.nii.gz`` -> ``_t2.nii.gz``), as
the authors' MSLUB loader does (``MSLUB/t1`` and ``t1.nii.gz``). Their IXI and BraTS21 loaders
replace every ``t1`` in the path, which gives the same paths on their CSVs (no IXI or BraTS21 id
contains ``t1``) but would rewrite MSLUB's ``patient1X`` into ``patient2X``: another patient's scan.

Every row is checked to name one subject: the subject id of ``img_name``, of the image, of the
mask and of the seg file must agree (``<id>_t2.nii.gz``, ``<id>_mask.nii.gz``, ``<id>_seg.nii.gz``);
a row that pairs two subjects is a one-line :class:`~pddpm_monai.utils.InputError` naming the CSV
line. A subject listed twice with the same files is kept twice, as the authors' loader does (their
``IXI_test.csv`` lists ``IXI486-Guys-1005`` twice), with a one-line warning; listed twice with
different files, it is an error.

Example:
    >>> items = read_split_csv("root/splits/IXI_train_fold0.csv", "root")  # doctest: +SKIP
    >>> items[0]["image"]  # doctest: +SKIP
    '/data/root/Train/ixi/t2/IXI002-Guys-0828_t2.nii.gz'
"""

from __future__ import annotations

import csv
import logging
import os
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from pddpm_monai.utils import InputError

__all__ = [
    "REQUIRED_COLUMNS",
    "SPLIT_NAMES",
    "split_path",
    "swap_modality",
    "subject_id",
    "read_split_csv",
    "fold_items",
]

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


#: file-name suffixes (``<id>_<suffix>.nii.gz``) that name a file's kind rather than its subject
IMAGE_SUFFIXES = ("t1", "t2", "flair", "pd", "t1ce", "t1gd")
KIND_SUFFIXES = {"image": IMAGE_SUFFIXES, "mask": ("mask",), "seg": ("seg",)}

_log = logging.getLogger("pddpm.data")
_warned: set[tuple[str, str]] = set()


def swap_modality(path: str, modality: str, source: str = "t1") -> str:
    """Point an image path of the authors' CSVs at another modality: folder and suffix only.

    ``/Test/MSLUB/t1/patient15_t1.nii.gz`` -> ``/Test/MSLUB/t2/patient15_t2.nii.gz``: the parent
    folder named ``source`` and a ``_<source>.nii.gz`` (or ``.nii``) suffix are swapped; a ``t1``
    anywhere else (``patient1X``, a site name) is left alone. This is what the authors' MSLUB
    loader does (``str.replace('MSLUB/t1', ...).replace('t1.nii.gz', ...)``); their IXI and
    BraTS21 loaders replace every ``t1``, which gives the same paths on their CSVs.

    Args:
        path: the ``img_path`` value (POSIX, relative to the data root, usually with a leading ``/``).
        modality: the modality to load (``"t2"``).
        source: the modality the CSV names (``"t1"`` in the authors' files).

    Example:
        >>> swap_modality("/Test/MSLUB/t1/patient15_t1.nii.gz", "t2")
        '/Test/MSLUB/t2/patient15_t2.nii.gz'
    """
    p = PurePosixPath(path)
    folder = p.parent.with_name(modality) if p.parent.name == source else p.parent
    name = p.name
    for ext in (".nii.gz", ".nii"):
        if name.endswith(f"_{source}{ext}"):
            name = name[: -len(f"_{source}{ext}")] + f"_{modality}{ext}"
            break
    return str(folder / name)


def subject_id(path_or_name: str, kind: str = "image") -> str:
    """The subject a file (or an ``img_name``) names: its file name without extension and kind suffix.

    ``.../IXI076-Guys-0753_t2.nii.gz`` -> ``IXI076-Guys-0753``; ``.../patient15_mask.nii.gz`` ->
    ``patient15``; ``BraTS2021_01122`` -> ``BraTS2021_01122`` (``01122`` is not a kind suffix).

    Args:
        path_or_name: a path or a bare name.
        kind: ``"image"`` (suffixes :data:`IMAGE_SUFFIXES`), ``"mask"`` or ``"seg"``.
    """
    stem = PurePosixPath(str(path_or_name)).name
    for ext in (".nii.gz", ".nii"):
        if stem.endswith(ext):
            stem = stem[: -len(ext)]
            break
    head, sep, tail = stem.rpartition("_")
    if sep and head and tail.lower() in KIND_SUFFIXES[kind]:
        return head
    return stem


def _available_t2(csv_path: Path) -> set[str] | None:
    """Names in the authors' ``avail_t2.csv`` beside ``csv_path`` (their IXI T2 filter), if present.

    Their file lists ``IXI..._t2.nii.gz``; their loader compares it with the CSV's ``img_name``
    after replacing ``t2`` by ``t1``; only the suffix is swapped here (same result on their ids).
    """
    avail = csv_path.parent / "avail_t2.csv"
    if not avail.is_file():
        return None
    with avail.open(newline="") as f:
        rows = list(csv.reader(f))
    return {swap_modality(row[-1], "t1", source="t2") for row in rows[1:] if row}


def _check_one_subject(csv_path: Path, line: int, row_name: str, item: dict[str, Any]) -> None:
    """One-line error when the row's name, image, mask and seg do not all name one subject."""
    ids = {"name": subject_id(row_name, "image")}
    for key in ("image", "mask", "seg"):
        if item[key] is not None:
            ids[key] = subject_id(item[key], key)
    if len(set(ids.values())) > 1:
        found = ", ".join(f"{k} {v}" for k, v in ids.items())
        raise InputError(
            csv_path,
            f"line {line} ('{row_name}') pairs files of different subjects ({found}): "
            "image, mask and seg of a row must name one subject",
        )


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
        rows = [(reader.line_num, row) for row in reader]
    keep = _available_t2(csv_path) if modality == "t2" else None
    items = []
    seen: dict[str, tuple[int, tuple[Any, ...]]] = {}
    duplicates: list[str] = []
    for line, row in rows:
        img_path = row["img_path"]
        if modality != "t1" and PurePosixPath(img_path).parent.name == "t1":
            if keep is not None and row["img_name"] not in keep and "IXI" in row["img_name"]:
                continue
            img_path = swap_modality(img_path, modality)
        item = {
            "name": subject_id(row["img_name"], "image"),
            "age": _parse_age(row.get("age")),
            "label": int(float(row["label"])) if row["label"] not in ("", None) else 0,
            "image": _resolve(data_root, img_path),
            "mask": _resolve(data_root, row["mask_path"]),
            "seg": _resolve(data_root, row["seg_path"]),
        }
        if item["image"] is None:
            raise InputError(csv_path, f"line {line}: row '{row['img_name']}' has an empty img_path")
        _check_one_subject(csv_path, line, row["img_name"], item)
        files = (item["image"], item["mask"], item["seg"])
        if item["name"] in seen:
            first, first_files = seen[item["name"]]
            if first_files != files:
                raise InputError(
                    csv_path, f"lines {first} and {line} list subject '{item['name']}' with different files"
                )
            duplicates.append(f"{item['name']} (lines {first}, {line})")
        else:
            seen[item["name"]] = (line, files)
        if check_files:
            for key in ("image", "mask", "seg"):
                if item[key] is not None and not Path(item[key]).is_file():
                    raise InputError(csv_path, f"{key} of '{item['name']}' not found: {item[key]}")
        items.append(item)
    if duplicates and (str(csv_path), ",".join(duplicates)) not in _warned:
        _warned.add((str(csv_path), ",".join(duplicates)))
        _log.warning(
            "warning: %s: %d subject(s) listed twice, kept twice as the authors' loader does: %s",
            csv_path,
            len(duplicates),
            "; ".join(duplicates),
        )
    return items


FoldPart = Literal["train", "val"]


def fold_items(
    data_root: str | os.PathLike | None, fold: int, part: FoldPart = "train"
) -> list[dict[str, Any]]:
    """The data list of a fold's IXI training or validation split (``splits/IXI_<part>_fold<k>.csv``).

    Args:
        data_root: the data root (DESIGN.md layout).
        fold: the cross-validation fold.
        part: ``"train"`` or ``"val"``.

    Returns:
        dicts with ``name``, ``image``, ``mask`` (absolute paths), ...

    Raises:
        InputError: no data root given, data root or ``splits/`` missing, or an empty split.
    """
    if data_root in (None, ""):
        raise InputError("data root", "no data root given (pddpm train --data-root, bundle --data_root)")
    root = Path(data_root)
    if not root.is_dir():
        raise InputError(root, "data root not found")
    if part not in ("train", "val"):
        raise ValueError(f"part must be 'train' or 'val', got {part!r}.")
    csv = split_path(root, f"IXI_{part}_fold{int(fold)}")
    items = read_split_csv(csv, root)
    if not items:
        raise InputError(csv, f"the {part} split of fold {fold} is empty")
    return items
