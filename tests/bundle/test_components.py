"""Unit tests of the bundle's library components and of ``python -m pddpm_monai.bundle.check``.

Covers :mod:`pddpm_monai.bundle.components`, :mod:`pddpm_monai.engines.distributed`,
:mod:`pddpm_monai.transforms.inference` and :mod:`pddpm_monai.bundle.check` on tiny inputs.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from parameterized import parameterized

import pddpm_monai.engines.distributed as distributed
from pddpm_monai.bundle import check as bundle_check
from pddpm_monai.bundle.components import checkpoint_inferer, read_threshold
from pddpm_monai.data.datalist import fold_items
from pddpm_monai.diffusion.process import DiffusionConfig
from pddpm_monai.engines.trainer import training_method
from pddpm_monai.inferers import DiffusionReconstructionInferer, PatchedDiffusionInferer
from pddpm_monai.methods.checkpoint import export_bundle_model, save_method_checkpoint
from pddpm_monai.networks import DiffusionUNet
from pddpm_monai.transforms.inference import PrepareScand, ToNatived
from pddpm_monai.utils import InputError
from tests.bundle.conftest import CONFIGS, TINY

TINY_OPTIONS = {
    "patch_size": 16,
    "t_test": 300,
    "sampling": "fixed",
    "loss": "patch",
    "diffusion": {"noise_type": "gaussian", "num_train_timesteps": 1000},
    "network": {k: v for k, v in TINY.items()},
}


def _checkpoint(tmp_path: Path, method: str = "pddpm") -> Path:
    m = training_method(method, TINY_OPTIONS, seed=0, drop_unknown=True)
    return save_method_checkpoint(tmp_path / f"{method}.pt", m)


# ---------------------------------------------------------------------------------- bundle.components


def test_training_method_drops_options_the_method_lacks() -> None:
    pddpm = training_method("pddpm", TINY_OPTIONS, seed=0, drop_unknown=True)
    ddpm = training_method("ddpm", TINY_OPTIONS, seed=0, drop_unknown=True)
    assert (pddpm.config.patch_size, pddpm.config.t_test) == (16, 300)
    assert ddpm.config.t_test == 300 and not hasattr(ddpm.config, "patch_size")
    assert ddpm.config.diffusion.noise_type == "gaussian"
    with pytest.raises(InputError, match="unknown method"):
        training_method("vae2", TINY_OPTIONS, seed=0, drop_unknown=True)


def test_export_bundle_model_loads_into_network_def(tmp_path: Path) -> None:
    source = _checkpoint(tmp_path)
    out = export_bundle_model(source, tmp_path / "models" / "model.pt")
    state = torch.load(out, weights_only=True)
    net = DiffusionUNet(**TINY)
    net.load_state_dict(state["model"], strict=True)
    original = torch.load(source, weights_only=True)["network"]
    for key, value in net.state_dict().items():
        torch.testing.assert_close(value, original[f"network.{key}"])
    assert "optimizer" not in state and state["method"] == "pddpm"


def test_checkpoint_inferer_uses_the_trained_settings(tmp_path: Path) -> None:
    path = _checkpoint(tmp_path)
    inferer = checkpoint_inferer(path, t_test=400, seed=3)
    assert isinstance(inferer, PatchedDiffusionInferer)
    assert (inferer.t_test, inferer.patch_size, inferer.return_anomaly_map) == (400, 16, True)
    assert inferer.process.config == DiffusionConfig(noise_type="gaussian")
    net = DiffusionUNet(**TINY).eval()
    volume = torch.rand(1, 1, 32, 32, 3)
    with torch.no_grad():
        out = inferer(volume, net)
        again = inferer(volume, net)
        reference = PatchedDiffusionInferer(inferer.process, t_test=400, patch_size=16, return_anomaly_map=True,
                                            seed=3)(volume, net)  # fmt: skip
    assert out.shape == volume.shape
    torch.testing.assert_close(out, again)  # seeded: the same scan gets the same map
    torch.testing.assert_close(out, reference)
    ddpm = checkpoint_inferer(_checkpoint(tmp_path, "ddpm"))
    assert isinstance(ddpm, DiffusionReconstructionInferer) and ddpm.t_test == 300
    with pytest.raises(InputError, match="patch_size"):
        checkpoint_inferer(_checkpoint(tmp_path, "ddpm"), patch_size=8)
    with pytest.raises(InputError, match="not found"):
        checkpoint_inferer(tmp_path / "missing.pt")


def test_read_threshold(tmp_path: Path) -> None:
    path = tmp_path / "threshold.json"
    path.write_text(json.dumps({"brats21": {"threshold": 0.25}, "mslub": {"threshold": 0.5}}))
    assert read_threshold(path, "mslub") == 0.5
    assert read_threshold(tmp_path / "absent.json", default=0.1) == 0.1
    with pytest.raises(InputError, match="run evaluating"):
        read_threshold(tmp_path / "absent.json")
    with pytest.raises(InputError, match="ixi"):
        read_threshold(path, "ixi")


def _splits_only_root(tmp_path: Path) -> Path:
    """A data root with empty split CSVs of fold 0 (enough for the configuration checks)."""
    for part in ("train", "val"):
        csv = tmp_path / "root" / "splits" / f"IXI_{part}_fold0.csv"
        csv.parent.mkdir(parents=True, exist_ok=True)
        csv.write_text("img_name,age,label,img_path,mask_path,seg_path\n")
    return tmp_path / "root"


def test_fold_items_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no data root"):
        fold_items("", 0)
    with pytest.raises(InputError, match="not found"):
        fold_items(tmp_path / "absent", 0)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no splits/ folder"):
        fold_items(tmp_path / "empty", 0)
    with pytest.raises(InputError, match="is empty"):
        fold_items(_splits_only_root(tmp_path), 0, "val")


# ------------------------------------------------------------------------------ engines.distributed

ITEMS = [{"name": f"s{i}"} for i in range(5)]
CASES = [(5, 2), (5, 3), (1, 2)]


@parameterized.expand(CASES)
def test_partition_items_gives_each_rank_its_own_share(n_items: int, world: int) -> None:
    items = ITEMS[:n_items]
    shares = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(distributed, "get_world_size", lambda: world)
        for rank in range(world):
            mp.setattr(distributed, "get_rank", lambda rank=rank: rank)
            shares.append([i["name"] for i in distributed.partition_items(items, seed=1)])
    assert len({len(s) for s in shares}) == 1  # even: the same number of iterations on every rank
    assert set().union(*shares) == {i["name"] for i in items}
    if n_items >= world:
        firsts = [set(s[: n_items // world]) for s in shares]
        assert all(a.isdisjoint(b) for i, a in enumerate(firsts) for b in firsts[i + 1 :])


def test_partition_items_records_the_names(tmp_path: Path) -> None:
    share = distributed.partition_items(ITEMS, record_dir=tmp_path)
    assert share == ITEMS  # one process: everything
    assert distributed.read_rank_records(tmp_path) == {0: [i["name"] for i in ITEMS]}


def test_single_process_defaults() -> None:
    assert (distributed.get_rank(), distributed.get_world_size(), distributed.is_main_process()) == (
        0,
        1,
        True,
    )
    assert distributed.main_process_handlers([1, 2], [3]) == [1, 2]
    gen = distributed.rank_generator(7)
    assert torch.equal(
        torch.rand(3, generator=gen), torch.rand(3, generator=torch.Generator().manual_seed(7))
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(distributed, "get_rank", lambda: 1)
        assert distributed.main_process_handlers([1, 2], [3]) == [3]
        assert distributed.main_process_writer("unused").add_scalar("x", 1.0, 1) is None


def test_init_distributed_outside_torchrun(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(RuntimeError, match="torchrun"):
        distributed.init_distributed()


# ---------------------------------------------------------------------------- transforms.inference


def _scan(shape=(12, 10, 8), affine=None) -> MetaTensor:
    img = torch.zeros(1, *shape)
    img[0, 2:10, 2:8, 2:6] = torch.rand(8, 6, 4) + 1
    img[0, 5, 4, 3] = 0  # a hole inside the brain: the mask fills it
    return MetaTensor(img, affine=torch.as_tensor(affine if affine is not None else np.eye(4)))


def test_prepare_scan_preprocessed_input() -> None:
    out = PrepareScand("image")({"image": _scan()})
    expected = torch.zeros(1, 12, 10, 8)
    expected[0, 2:10, 2:8, 2:6] = 1
    torch.testing.assert_close(out["mask"].as_tensor(), expected)
    torch.testing.assert_close(out["mask"].affine, out["image"].affine)
    assert out["scan_record"] == ""
    with pytest.raises(InputError, match="all zeros"):
        PrepareScand("image")({"image": MetaTensor(torch.zeros(1, 4, 4, 4))})
    with pytest.raises(InputError, match="3-D scan"):
        PrepareScand("image")({"image": MetaTensor(torch.ones(2, 4, 4, 4))})


def test_to_native_maps_back_with_the_record() -> None:
    root_affine = np.eye(4)
    native_affine = np.eye(4)
    native_affine[:3, 3] = [2.0, 3.0, 1.0]  # the native scan starts 2/3/1 voxels further
    record = {
        "root_grid": {"shape": [12, 10, 8], "affine": root_affine.tolist()},
        "native": {"shape": [6, 5, 4], "affine": native_affine.tolist()},
        "registration": None,
    }
    pred = _scan()
    data = {"pred": pred, "scan_record": json.dumps(record)}
    out = ToNatived("pred", modes="nearest")(data)["pred"]
    assert tuple(out.shape) == (1, 6, 5, 4)
    torch.testing.assert_close(out[0], pred[0, 2:8, 3:8, 1:5].float(), check_dtype=False)
    np.testing.assert_allclose(np.asarray(out.affine), native_affine)
    unchanged = ToNatived("pred")({"pred": pred, "scan_record": ""})
    assert unchanged["pred"] is pred


# ------------------------------------------------------------------------------------- bundle_check


def test_bundle_check_refuses_unknown_override_keys(capsys: pytest.CaptureFixture) -> None:
    code = bundle_check.main(["run", "training", "--config_file", str(CONFIGS / "train.json"),
                              "--data_root", "/nowhere", "--patch_sizee", "60"])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "'patch_sizee'" in err and "did you mean 'patch_size'" in err


def test_bundle_check_refuses_a_data_root_without_splits(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    code = bundle_check.main(["run", "training", "--config_file", str(CONFIGS / "train.json"),
                              "--data_root", str(tmp_path), "--fold", "2"])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "no splits/ folder" in err


def test_bundle_check_accepts_nested_and_merged_keys(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    files = str([str(CONFIGS / "train.json"), str(CONFIGS / "multi_gpu_train.json")])
    root = _splits_only_root(tmp_path)
    code = bundle_check.main(["check", "training", "--config_file", files, "--data_root", str(root),
                              "--train#trainer#max_epochs", "3", "--backend=gloo", "--channel_mult", "[1,2]"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    code = bundle_check.main(
        ["check", "training", "--config_file", files, "--data_root", str(root), "--fold", "3"]
    )
    assert code == 2 and "IXI_train_fold3" in capsys.readouterr().err


def test_bundle_check_one_line_for_errors_inside_the_run(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    import nibabel as nib

    scan = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((4, 4, 4), np.float32), np.eye(4)), str(scan))
    code = bundle_check.main(["run", "inference", "--config_file", str(CONFIGS / "inference.json"),
                              "--bundle_root", str(tmp_path), "--image", str(scan)])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        code == 2
        and err[-1].startswith("pddpm bundle: error:")
        and "model.pt: checkpoint not found" in err[-1]
    )


def test_prepare_scan_cache_is_reused_and_keyed_by_the_settings(tmp_path, monkeypatch) -> None:
    """A raw scan's preprocessing runs once per (scan, atlas, settings); the cache gives the same tensors."""
    from pddpm_monai.transforms.atlas import Atlas
    from pddpm_monai.transforms.config import PreprocessConfig
    from pddpm_monai.transforms.inference import CACHE_FILES, cache_folder
    from pddpm_monai.transforms.sitk_convert import to_metatensor

    calls = []

    def fake_preprocess(self, img, source, atlas):
        calls.append(source)
        t2 = to_metatensor(
            np.arange(12 * 10 * 8, dtype=np.float32).reshape(12, 10, 8), np.diag([2.0, 2, 2, 1])
        )
        mask = to_metatensor(np.ones((12, 10, 8), np.float32), np.diag([2.0, 2, 2, 1]))
        record = {"root_grid": {"shape": [12, 10, 8], "affine": np.diag([2.0, 2, 2, 1]).tolist()}}
        return t2, mask, {**record, **self._cache_key(source, atlas)}

    monkeypatch.setattr(PrepareScand, "_preprocess", fake_preprocess)
    atlas = Atlas(tmp_path / "atlas.nii.gz")
    scan = _scan()
    scan.meta["filename_or_obj"] = str(tmp_path / "sub-01_T2w.nii.gz")

    def run(config=PreprocessConfig()):
        prepare = PrepareScand("image", raw=True, atlas=atlas, config=config, cache_dir=tmp_path / "out")
        return prepare({"image": scan})

    first, second = run(), run()
    assert len(calls) == 1  # the second run read the cache
    assert all(
        (cache_folder(tmp_path / "out", "sub-01_T2w.nii.gz") / f).is_file() for f in CACHE_FILES.values()
    )
    for key in ("image", "mask"):
        torch.testing.assert_close(first[key].as_tensor(), second[key].as_tensor(), rtol=0, atol=0)
        np.testing.assert_array_equal(np.asarray(first[key].affine), np.asarray(second[key].affine))
    assert json.loads(first["scan_record"]) == json.loads(second["scan_record"])
    run(PreprocessConfig(n4_iterations=(20, 20)))  # other settings: preprocessed again
    assert len(calls) == 2
