from pathlib import Path

import pytest

from pddpm_monai.data.datalist import read_split_csv, split_path, subject_id, swap_modality
from pddpm_monai.utils import InputError

AUTHORS_IXI = """,img_name,"SEX_ID (1=m, 2=f)",age,label,img_path,mask_path,seg_path,Agegroup
64,IXI076-Guys-0753_t1.nii.gz,1,55.83,0,/Train/ixi/t1/IXI076-Guys-0753_t1.nii.gz,/Train/ixi/mask/IXI076-Guys-0753_mask.nii.gz,,2.0
65,IXI999-Guys-0001_t1.nii.gz,1,40.0,0,/Train/ixi/t1/IXI999-Guys-0001_t1.nii.gz,/Train/ixi/mask/IXI999-Guys-0001_mask.nii.gz,,2.0
"""
AVAIL = ",0\n0,IXI076-Guys-0753_t2.nii.gz\n"
AUTHORS_BRATS = """,img_name,Cohort Name (if publicly available),age,label,img_path,mask_path,seg_path
408,BraTS2021_01122,Private Collection,,1,/Test/Brats21/t1/BraTS2021_01122_t1.nii.gz,/Test/Brats21/mask/BraTS2021_01122_mask.nii.gz,/Test/Brats21/seg/BraTS2021_01122_seg.nii.gz
"""


def _touch(root: Path, *rel: str) -> None:
    for r in rel:
        (root / r).parent.mkdir(parents=True, exist_ok=True)
        (root / r).write_bytes(b"x")


def test_reads_authors_ixi_csv_for_t2(tmp_path):
    (tmp_path / "splits").mkdir()
    (tmp_path / "splits/IXI_train_fold0.csv").write_text(AUTHORS_IXI)
    (tmp_path / "splits/avail_t2.csv").write_text(AVAIL)
    _touch(tmp_path, "Train/ixi/t2/IXI076-Guys-0753_t2.nii.gz", "Train/ixi/mask/IXI076-Guys-0753_mask.nii.gz")
    items = read_split_csv(split_path(tmp_path, "IXI_train_fold0"), tmp_path)
    assert len(items) == 1  # IXI999 has no T2 (not in avail_t2.csv)
    item = items[0]
    assert item["name"] == "IXI076-Guys-0753"
    assert item["image"] == str(tmp_path / "Train/ixi/t2/IXI076-Guys-0753_t2.nii.gz")
    assert item["seg"] is None and item["label"] == 0 and item["age"] == pytest.approx(55.83)


def test_reads_authors_brats_csv(tmp_path):
    (tmp_path / "splits").mkdir()
    (tmp_path / "splits/Brats21_val.csv").write_text(AUTHORS_BRATS)
    _touch(
        tmp_path,
        "Test/Brats21/t2/BraTS2021_01122_t2.nii.gz",
        "Test/Brats21/mask/BraTS2021_01122_mask.nii.gz",
        "Test/Brats21/seg/BraTS2021_01122_seg.nii.gz",
    )
    (item,) = read_split_csv(tmp_path / "splits/Brats21_val.csv", tmp_path)
    assert item["label"] == 1 and item["age"] is None
    assert item["seg"].endswith("Test/Brats21/seg/BraTS2021_01122_seg.nii.gz")
    assert item["image"].endswith("Test/Brats21/t2/BraTS2021_01122_t2.nii.gz")


def test_errors_name_the_file(tmp_path):
    with pytest.raises(InputError, match="no splits/ folder"):
        split_path(tmp_path, "IXI_test")
    (tmp_path / "splits").mkdir()
    bad = tmp_path / "splits/IXI_test.csv"
    bad.write_text("img_name,label\nA,0\n")
    with pytest.raises(InputError, match="IXI_test.csv: split CSV lacks column"):
        read_split_csv(bad, tmp_path)
    (tmp_path / "splits/Brats21_val.csv").write_text(AUTHORS_BRATS)
    with pytest.raises(InputError, match="Brats21_val.csv: image of 'BraTS2021_01122' not found"):
        read_split_csv(tmp_path / "splits/Brats21_val.csv", tmp_path)


# ---- the authors' own CSVs (tests/data/authors_splits, see its README) ----

AUTHORS_SPLITS = Path(__file__).parent / "authors_splits"
MSLUB_PATIENTS = [f"patient{i:02d}" for i in range(1, 31)]


def _authors_root(tmp_path: Path, *csvs: str) -> Path:
    """A data root with the authors' layout: every MSLUB patient's t2/mask/seg file and their CSVs."""
    import shutil

    (tmp_path / "splits").mkdir()
    for name in csvs:
        shutil.copy(AUTHORS_SPLITS / name, tmp_path / "splits" / name)
    for patient in MSLUB_PATIENTS:
        _touch(tmp_path, *(f"Test/MSLUB/{k}/{patient}_{k}.nii.gz" for k in ("t2", "mask", "seg")))
    return tmp_path


@pytest.mark.parametrize("split, n_rows, n_teens", [("MSLUB_val", 10, 3), ("MSLUB_test", 20, 7)])
def test_authors_mslub_rows_resolve_to_their_own_patient(tmp_path, split, n_rows, n_teens):
    root = _authors_root(tmp_path, f"{split}.csv")
    items = read_split_csv(split_path(root, split), root)
    assert len(items) == n_rows
    # the rows a blind replace("t1", "t2") would pair with patient2X (10 of the authors' 30)
    assert sum(item["name"].startswith("patient1") for item in items) == n_teens
    for item in items:
        name = item["name"]
        assert item["image"] == str(root / f"Test/MSLUB/t2/{name}_t2.nii.gz")
        assert item["mask"] == str(root / f"Test/MSLUB/mask/{name}_mask.nii.gz")
        assert item["seg"] == str(root / f"Test/MSLUB/seg/{name}_seg.nii.gz")
    # every patient once, val and test disjoint as in the paper (10 / 20 of 30)
    assert len({item["name"] for item in items}) == n_rows


def test_authors_mslub_val_and_test_cover_the_30_patients_once(tmp_path):
    root = _authors_root(tmp_path, "MSLUB_val.csv", "MSLUB_test.csv")
    names = [
        it["name"] for s in ("MSLUB_val", "MSLUB_test") for it in read_split_csv(split_path(root, s), root)
    ]
    assert sorted(names) == MSLUB_PATIENTS


def test_a_row_pairing_two_subjects_fails_in_one_line(tmp_path):
    root = _authors_root(tmp_path, "MSLUB_val.csv")
    path = root / "splits/MSLUB_val.csv"
    # what the blind replace produced for patient15 (line 3): patient25's scan with patient15's mask
    text = path.read_bytes().decode()
    bad = text.replace("/Test/MSLUB/t1/patient15_t1.nii.gz", "/Test/MSLUB/t2/patient25_t2.nii.gz")
    assert bad != text
    path.write_bytes(bad.encode())
    with pytest.raises(InputError) as err:
        read_split_csv(path, root)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: line 3 ('patient15') pairs files of different subjects")
    assert "image patient25" in message and "mask patient15" in message


def test_authors_ixi_duplicate_rows_are_kept_as_their_loader_does(tmp_path, caplog):
    import shutil

    (tmp_path / "splits").mkdir()
    for name in ("IXI_test.csv", "avail_t2.csv"):
        shutil.copy(AUTHORS_SPLITS / name, tmp_path / "splits" / name)
    for subject in ("IXI105-HH-1471", "IXI012-HH-1211", "IXI486-Guys-1005"):
        _touch(tmp_path, f"Train/ixi/t2/{subject}_t2.nii.gz", f"Train/ixi/mask/{subject}_mask.nii.gz")
    with caplog.at_level("WARNING", logger="pddpm.data"):
        items = read_split_csv(split_path(tmp_path, "IXI_test"), tmp_path)
    names = [item["name"] for item in items]
    assert names == ["IXI105-HH-1471", "IXI012-HH-1211", "IXI486-Guys-1005", "IXI486-Guys-1005"]
    assert items[3]["image"] == str(tmp_path / "Train/ixi/t2/IXI486-Guys-1005_t2.nii.gz")
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "IXI486-Guys-1005 (lines 4, 5)" in warnings[0]
    assert "\n" not in warnings[0]


def test_duplicate_subject_with_other_files_is_an_error(tmp_path):
    (tmp_path / "splits").mkdir()
    csv_path = tmp_path / "splits/IXI_test.csv"
    rows = [
        "img_name,label,img_path,mask_path,seg_path",
        "IXI012-HH-1211_t2.nii.gz,0,/Train/ixi/t2/IXI012-HH-1211_t2.nii.gz,/Train/ixi/mask/IXI012-HH-1211_mask.nii.gz,",
        "IXI012-HH-1211_t2.nii.gz,0,/Other/t2/IXI012-HH-1211_t2.nii.gz,/Train/ixi/mask/IXI012-HH-1211_mask.nii.gz,",
    ]
    csv_path.write_text("\n".join(rows) + "\n")
    with pytest.raises(InputError, match="lines 2 and 3 list subject 'IXI012-HH-1211' with different files"):
        read_split_csv(csv_path, tmp_path, check_files=False)


# ids containing "t1"/"t2" (constructed: no IXI id of the authors' files has one, a user's cohort may)
CONSTRUCTED_IXI = """,img_name,age,label,img_path,mask_path,seg_path
0,IXI901-Ost1-0001_t1.nii.gz,40.0,0,/Train/ixi/t1/IXI901-Ost1-0001_t1.nii.gz,/Train/ixi/mask/IXI901-Ost1-0001_mask.nii.gz,
1,IXI902-Ost2-0002_t1.nii.gz,41.0,0,/Train/ixi/t1/IXI902-Ost2-0002_t1.nii.gz,/Train/ixi/mask/IXI902-Ost2-0002_mask.nii.gz,
"""
CONSTRUCTED_AVAIL = ",0\n0,IXI901-Ost1-0001_t2.nii.gz\n1,IXI902-Ost2-0002_t2.nii.gz\n"


def test_ids_containing_t1_or_t2_keep_their_id(tmp_path):
    (tmp_path / "splits").mkdir()
    (tmp_path / "splits/IXI_test.csv").write_text(CONSTRUCTED_IXI)
    (tmp_path / "splits/avail_t2.csv").write_text(CONSTRUCTED_AVAIL)
    subjects = ("IXI901-Ost1-0001", "IXI902-Ost2-0002")
    for s in subjects:
        _touch(tmp_path, f"Train/ixi/t2/{s}_t2.nii.gz", f"Train/ixi/mask/{s}_mask.nii.gz")
    items = read_split_csv(tmp_path / "splits/IXI_test.csv", tmp_path)
    # a blind replace would read Ost2's image for Ost1 and drop Ost2 from the avail_t2 filter
    assert [it["name"] for it in items] == list(subjects)
    for it, s in zip(items, subjects):
        assert it["image"] == str(tmp_path / f"Train/ixi/t2/{s}_t2.nii.gz")


@pytest.mark.parametrize(
    "path, expected",
    [
        ("/Test/MSLUB/t1/patient15_t1.nii.gz", "/Test/MSLUB/t2/patient15_t2.nii.gz"),
        ("/Test/MSLUB/t1/patient01_t1.nii.gz", "/Test/MSLUB/t2/patient01_t2.nii.gz"),
        ("/Train/ixi/t1/IXI901-Ost1-0001_t1.nii.gz", "/Train/ixi/t2/IXI901-Ost1-0001_t2.nii.gz"),
        ("/Test/Brats21/t1/BraTS2021_01122_t1.nii.gz", "/Test/Brats21/t2/BraTS2021_01122_t2.nii.gz"),
        ("/t1data/t1/scan_t1.nii", "/t1data/t2/scan_t2.nii"),
    ],
)
def test_swap_modality_changes_folder_and_suffix_only(path, expected):
    assert swap_modality(path, "t2") == expected


@pytest.mark.parametrize(
    "value, kind, expected",
    [
        ("/Test/MSLUB/t2/patient15_t2.nii.gz", "image", "patient15"),
        ("/Test/MSLUB/mask/patient15_mask.nii.gz", "mask", "patient15"),
        ("/Test/Brats21/seg/BraTS2021_01122_seg.nii.gz", "seg", "BraTS2021_01122"),
        ("BraTS2021_01122", "image", "BraTS2021_01122"),
        ("IXI012-HH-1211_t1.nii.gz", "image", "IXI012-HH-1211"),
        ("sub_01.nii.gz", "image", "sub_01"),
    ],
)
def test_subject_id(value, kind, expected):
    assert subject_id(value, kind) == expected
