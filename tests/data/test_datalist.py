from pathlib import Path

import pytest

from pddpm_monai.data.datalist import read_split_csv, split_path
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
