"""The MONAI bundle ``bundles/pddpm_brain_uad`` run end to end on a tiny synthetic data root.

``python -m monai.bundle run training`` (subprocess, once per session) trains a tiny network and
exports ``models/model.pt``; the other tests run ``evaluating`` and ``inference`` on it, reproduce
what MONAI Label's ``BundleInferTask`` does with the bundle, verify the metadata and the network's
input/output, and run the 2-process gloo DDP training with ``torchrun``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser

from pddpm_monai.evaluation.postprocess import postprocess_anomaly_map
from pddpm_monai.methods.checkpoint import load_scorer
from pddpm_monai.networks import DiffusionUNet
from pddpm_monai.transforms.loading import model_grid_transforms
from tests.bundle.conftest import BUNDLE, CONFIGS, REPO_ROOT, TINY, shared_once, tiny_overrides

TRAIN_ARGS = ["--epochs", "1", "--batch_size", "2", "--val_slices_per_volume", "2", "--cache_workers", "1"]
#: the training fixture caches the model-grid volumes on disk so that the resume test reloads them fast
CACHE_ARGS = ["--cache", "disk"]
META = str(CONFIGS / "metadata.json")


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    return env


def _run(cmd: list[str], timeout: int = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        cmd,
        cwd=BUNDLE,
        env=_env(),
        capture_output=True,
        text=True,
        encoding="utf-8",
        errors="replace",
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _test_scan(root: Path) -> tuple[Path, Path]:
    """The first BraTS-like test scan of the tiny root and its lesion mask."""
    row = (root / "splits" / "Brats21_test.csv").read_text(encoding="utf-8").splitlines()[1].split(",")
    return root / row[4].lstrip("/"), root / row[6].lstrip("/")


@pytest.fixture(scope="session")
def trained_bundle(tiny_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bundle root whose ``models/model.pt`` was trained by ``python -m monai.bundle run training``."""

    def train(out: Path) -> None:
        _run([sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", "configs/train.json",
              "--meta_file", "configs/metadata.json", "--bundle_root", str(out), "--data_root", str(tiny_root),
              *TRAIN_ARGS, *CACHE_ARGS, *tiny_overrides()])  # fmt: skip

    return shared_once(tmp_path_factory, "trained_bundle", train)


@pytest.mark.slow
def test_run_training_writes_checkpoints(trained_bundle: Path) -> None:
    model = torch.load(trained_bundle / "models" / "model.pt", weights_only=True)
    # the "model" entry fits the inference network_def strictly (what CheckpointLoader and MONAI Label load)
    DiffusionUNet(**TINY).load_state_dict(model["model"], strict=True)
    assert (
        model["method"] == "pddpm" and model["config"]["network"]["model_channels"] == TINY["model_channels"]
    )
    last = torch.load(trained_bundle / "runs" / "fold0" / "last.pt", weights_only=True)
    assert last["trainer"]["epoch"] == 1 and "optimizer" in last
    best = torch.load(trained_bundle / "runs" / "fold0" / "best.pt", weights_only=True)
    assert np.isfinite(best["trainer"]["best_val_loss"])
    # model.pt holds the best checkpoint's weights
    for key, value in best["network"].items():
        torch.testing.assert_close(model["model"][key.removeprefix("network.")], value)
    assert list((trained_bundle / "runs" / "fold0" / "tensorboard").glob("events.out.tfevents.*"))


@pytest.mark.slow
def test_run_training_resumes_from_last(trained_bundle: Path, tmp_path: Path, tiny_root: Path) -> None:
    from monai.bundle import run

    bundle = tmp_path / "bundle"
    shutil.copytree(trained_bundle, bundle)
    first = torch.load(bundle / "runs" / "fold0" / "last.pt", weights_only=True)
    run("training", config_file=str(CONFIGS / "train.json"), bundle_root=str(bundle), data_root=str(tiny_root),
        epochs=2, batch_size=2, val_slices_per_volume=2, cache="disk", **TINY)  # fmt: skip
    last = torch.load(bundle / "runs" / "fold0" / "last.pt", weights_only=True)
    per_epoch = first["trainer"]["epoch_length"]
    assert (last["trainer"]["epoch"], last["trainer"]["iteration"]) == (2, 2 * per_epoch)
    # the optimiser continued (Adam's step count), it did not start over
    steps = {int(v["step"]) for v in last["optimizer"]["state"].values()}
    assert steps == {2 * per_epoch}
    assert not torch.equal(last["rng"], first["rng"])


def _reference_map(model_path: Path, scan: Path) -> tuple[np.ndarray, np.ndarray]:
    """Anomaly map of the library (``load_scorer`` + model-grid loading + post-processing) and its affine."""
    image = nib.load(str(scan))
    mask = (image.get_fdata() > 0).astype(np.uint8)
    mask_path = scan.parent / "ref_mask.nii.gz"
    nib.save(nib.Nifti1Image(mask, image.affine), str(mask_path))
    data = model_grid_transforms(("image", "mask"))({"image": str(scan), "mask": str(mask_path)})
    _, raw = load_scorer(model_path, seed=0)(data["image"], data["mask"])
    return postprocess_anomaly_map(raw, data["mask"]), np.asarray(data["image"].affine)


@pytest.mark.slow
def test_run_inference_writes_maps_on_the_input_grid(
    trained_bundle: Path, tiny_root: Path, tmp_path: Path
) -> None:
    from monai.bundle import run

    scan_src, seg_path = _test_scan(tiny_root)
    scan = tmp_path / "scan.nii.gz"
    shutil.copy(scan_src, scan)
    out = tmp_path / "out"
    run("inference", config_file=str(CONFIGS / "inference.json"), bundle_root=str(trained_bundle),
        image=str(scan), output_dir=str(out), threshold=0.3, **TINY)  # fmt: skip
    anomaly = nib.load(str(out / "scan_anomaly.nii.gz"))
    mask = nib.load(str(out / "scan_mask.nii.gz"))
    source = nib.load(str(scan))
    for written in (anomaly, mask):
        assert written.shape == source.shape
        np.testing.assert_allclose(written.affine, source.affine, atol=1e-5)
    amap, binary = anomaly.get_fdata(), mask.get_fdata()
    assert set(np.unique(binary)) <= {0.0, 1.0} and binary.any()
    seg = nib.load(str(seg_path)).get_fdata() > 0
    brain = source.get_fdata() > 0
    assert amap[seg].mean() > 2 * amap[brain & ~seg].mean()  # the bright lesion scores high
    # independent reference: the library's map on the model grid, sampled at its voxel centres
    ref, ref_affine = _reference_map(trained_bundle / "models" / "model.pt", scan)
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in ref.shape], indexing="ij"), -1).reshape(-1, 3)
    world = ijk @ ref_affine[:3, :3].T + ref_affine[:3, 3]
    src = np.rint((world - source.affine[:3, 3]) @ np.linalg.inv(source.affine[:3, :3]).T).astype(int)
    inside = np.all((src >= 0) & (src < np.array(source.shape)), axis=1)
    got = amap[tuple(src[inside].T)]
    want = ref.reshape(-1)[inside]
    assert np.corrcoef(got, want)[0, 1] > 0.95
    assert np.abs(got - want).mean() < 0.1 * want.max()


@pytest.mark.slow
def test_monailabel_bundle_infer_task_emulation(trained_bundle: Path, tiny_root: Path) -> None:
    """What MONAI Label's ``BundleInferTask`` does with ``configs/inference.json`` and ``models/model.pt``."""
    from monai.transforms import Compose, LoadImaged, SaveImaged

    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "inference.json"))
    parser.config.update({"bundle_root": str(trained_bundle), "device": "cpu", "threshold": 0.3, **TINY})
    metadata = json.loads((CONFIGS / "metadata.json").read_text(encoding="utf-8"))
    key_image, _ = next(iter(metadata["network_data_format"]["inputs"].items()))
    key_pred, pred = next(iter(metadata["network_data_format"]["outputs"].items()))
    labels = {v.lower(): int(k) for k, v in pred["channel_def"].items() if v.lower() != "background"}
    assert (key_image, key_pred, labels) == ("image", "pred", {"anomaly": 1})

    network = parser.get_parsed_content("network_def", instantiate=True)
    checkpoint = torch.load(trained_bundle / "models" / "model.pt", map_location="cpu")  # as MONAI Label
    state = checkpoint.get("model", checkpoint)
    assert set(state) == set(network.state_dict())
    network.load_state_dict(state, strict=True)
    network.eval()

    pre = parser.get_parsed_content("preprocessing", instantiate=True)
    pre = list(pre.transforms) if isinstance(pre, Compose) else pre
    for t in pre:
        if isinstance(t, LoadImaged):
            t._loader.image_only = False  # MONAI Label loads the meta dict too
    scan, _ = _test_scan(tiny_root)
    data = {"image": str(scan), "image_path": str(scan), "device": "cpu", "result_extension": ".nii.gz"}
    for t in pre:
        data = t(data)
    inferer = parser.get_parsed_content("inferer", instantiate=True)
    with torch.no_grad():
        data["pred"] = inferer(data["image"][None], network)[0]
    post = parser.get_parsed_content("postprocessing", instantiate=True)
    for t in [t for t in post.transforms if not isinstance(t, SaveImaged)]:
        data = t(data)
    source = nib.load(str(scan))
    # MONAI Label's Restored resizes to the loaded spatial shape: ours is already there (no resize)
    assert tuple(data["pred"].shape[1:]) == tuple(data["image"].meta["spatial_shape"]) == source.shape
    np.testing.assert_allclose(np.asarray(data["pred"].affine), source.affine, atol=1e-5)
    assert set(torch.unique(data["pred"]).tolist()) <= {0.0, 1.0}


@pytest.mark.slow
def test_run_evaluating_writes_table_and_threshold(
    trained_bundle: Path, tiny_root: Path, tmp_path: Path
) -> None:
    from monai.bundle import run

    from pddpm_monai.bundle.components import read_threshold

    out, threshold_path = tmp_path / "eval", tmp_path / "threshold.json"
    run("evaluating", config_file=str(CONFIGS / "evaluate.json"), bundle_root=str(trained_bundle),
        data_root=str(tiny_root), output_dir=str(out), threshold_path=str(threshold_path),
        datasets=["brats21"], figures=False, save_nifti=False, progress=False)  # fmt: skip
    table = (out / "table.md").read_text(encoding="utf-8")
    row = next(line for line in table.splitlines() if line.startswith("| pDDPM"))
    assert float(row.split("|")[2].strip(" *")) >= 0  # BraTS21 Dice [%]
    metrics = (out / "pddpm" / "fold0" / "metrics.csv").read_text(encoding="utf-8").splitlines()
    n_test = len((tiny_root / "splits" / "Brats21_test.csv").read_text(encoding="utf-8").splitlines()) - 1
    assert len(metrics) == 1 + n_test
    thresholds = json.loads((out / "pddpm" / "fold0" / "thresholds.json").read_text(encoding="utf-8"))
    assert read_threshold(threshold_path, "brats21") == pytest.approx(thresholds["brats21"]["threshold"])


def test_verify_metadata(meta_schema: Path, tmp_path: Path) -> None:
    from monai.bundle import verify_metadata

    schema = tmp_path / meta_schema.name
    shutil.copy(meta_schema, schema)
    verify_metadata(meta_file=META, filepath=str(schema))
    broken = tmp_path / "metadata.json"
    meta = json.loads(Path(META).read_text(encoding="utf-8"))
    del meta["network_data_format"]
    broken.write_text(json.dumps(meta))
    with pytest.raises(Exception, match="network_data_format"):
        verify_metadata(meta_file=str(broken), filepath=str(schema))


def test_verify_net_in_out() -> None:
    """MONAI's check as model-zoo's ``verify_bundle.py`` runs it: ``network_def`` called with one volume."""
    from monai.bundle import verify_net_in_out

    config = str(CONFIGS / "inference.json")
    verify_net_in_out(
        net_id="network_def", meta_file=META, config_file=config, device="cpu", bundle_root=str(BUNDLE)
    )
    with pytest.raises(ValueError, match="output channel"):
        verify_net_in_out(net_id="network_def", meta_file=META, config_file=config, device="cpu",
                          bundle_root=str(BUNDLE), **{"_meta_#network_data_format#outputs#pred#num_channels": 2})  # fmt: skip


@pytest.mark.slow
def test_ddp_gloo_two_processes_partition_the_data(tiny_root: Path, tmp_path: Path) -> None:
    from pddpm_monai.data.datalist import fold_items
    from pddpm_monai.engines.distributed import read_rank_records

    _run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "monai.bundle", "run",
          "training", "--config_file", "['configs/train.json','configs/multi_gpu_train.json']",
          "--bundle_root", str(tmp_path), "--data_root", str(tiny_root), *TRAIN_ARGS, *tiny_overrides()])  # fmt: skip
    records = read_rank_records(tmp_path / "runs" / "fold0" / "ranks")
    assert sorted(records) == [0, 1]
    assert set(records[0]) != set(records[1]) and len(records[0]) == len(records[1])
    names = {item["name"] for item in fold_items(tiny_root, 0, "train")}
    assert set(records[0]) | set(records[1]) == names
    model = torch.load(tmp_path / "models" / "model.pt", weights_only=True)
    DiffusionUNet(**TINY).load_state_dict(model["model"], strict=True)
    # rank 0 only: one TensorBoard event file
    assert len(list((tmp_path / "runs" / "fold0" / "tensorboard").glob("events.out.tfevents.*"))) == 1


def test_configs_only_wire_library_objects() -> None:
    """No logic in long ``$`` expressions: every expression of the configs is short."""
    for path in CONFIGS.glob("*.json"):
        expressions = [v for v in _strings(json.loads(path.read_text(encoding="utf-8"))) if v.startswith("$")]
        long = [e for e in expressions if len(e) > 70]
        assert not long, f"{path.name}: {long}"


def _strings(node):
    if isinstance(node, dict):
        for value in node.values():
            yield from _strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from _strings(value)
    elif isinstance(node, str):
        yield node


@pytest.mark.slow
def test_run_preprocessing_and_splitting(tiny_root: Path, tmp_path: Path) -> None:
    """``preprocess.json``: a BraTS-like raw scan (stripped: no HD-BET; registered, as the authors' BraTS)."""
    from monai.bundle import run

    scan, seg = _test_scan(tiny_root)
    name = scan.name.removesuffix("_t2.nii.gz")
    raw = tmp_path / "raw" / name
    raw.mkdir(parents=True)
    shutil.copy(scan, raw / scan.name)
    shutil.copy(seg, raw / f"{name}_seg.nii.gz")
    root = tmp_path / "root"
    atlas = next((tiny_root / "Train" / "ixi" / "t2").glob("*.nii.gz"))
    run("preprocessing", config_file=str(CONFIGS / "preprocess.json"), dataset="brats21",
        raw_dir=str(tmp_path / "raw"), data_root=str(root), atlas=str(atlas), progress=False)  # fmt: skip
    out_t2 = root / "Test" / "Brats21" / "t2" / scan.name
    out_seg = nib.load(str(root / "Test" / "Brats21" / "seg" / f"{name}_seg.nii.gz")).get_fdata()
    assert nib.load(str(out_t2)).shape == (192, 192, 160)
    # the lesion follows the affine registration: its volume scales by 1 / det(A)
    record = json.loads((root / "Test" / "Brats21" / "records" / f"{name}.json").read_text(encoding="utf-8"))
    det = abs(np.linalg.det(np.reshape(record["registration"]["parameters"][:9], (3, 3))))
    raw_lesion = (nib.load(str(seg)).get_fdata() > 0).sum()
    assert (out_seg > 0).sum() == pytest.approx(raw_lesion / det, rel=0.1)
    # splits of a whole root (the tiny root's volumes, without its splits/)
    copy = tmp_path / "copy"
    shutil.copytree(tiny_root, copy, ignore=shutil.ignore_patterns("splits"))
    run("splitting", config_file=str(CONFIGS / "preprocess.json"), data_root=str(copy), n_folds=2)
    assert (copy / "splits" / "IXI_train_fold1.csv").is_file()
    assert not (copy / "splits" / "IXI_train_fold2.csv").exists()


# ------------------------------------------------------------------------- one training path (issue 16)
#: ``pddpm train`` options equal to TRAIN_ARGS + CACHE_ARGS + TINY of the bundle runs
CLI_TRAIN_ARGS = [
    "--epochs",
    "1",
    "--batch-size",
    "2",
    "--val-slices",
    "2",
    "--cache",
    "disk",
    "--threads",
    "1",
]
CLI_TINY = ["--channels", "8", "--channel-mult", "1", "2", "2", "--res-blocks", "1", "--groups", "4",
            "--head-channels", "8"]  # fmt: skip


def _cli_last(tiny_root: Path, out: Path, *args: str) -> dict:
    from pddpm_monai import cli

    assert cli.main(["train", "--data-root", str(tiny_root), "--out", str(out), *CLI_TRAIN_ARGS, *args]) == 0
    return torch.load(out / "last.pt", weights_only=True)


def _assert_same_run(cli_last: dict, bundle_last: dict) -> None:
    assert cli_last["method"] == bundle_last["method"] and cli_last["config"] == bundle_last["config"]
    assert cli_last["trainer"] == bundle_last["trainer"]
    assert cli_last["network"].keys() == bundle_last["network"].keys()
    for key, value in cli_last["network"].items():
        assert torch.equal(value, bundle_last["network"][key]), key
    for index, moments in cli_last["optimizer"]["state"].items():
        assert torch.equal(moments["exp_avg_sq"], bundle_last["optimizer"]["state"][index]["exp_avg_sq"])
    assert torch.equal(cli_last["rng"], bundle_last["rng"])


@pytest.mark.slow
def test_cli_and_bundle_training_give_the_same_weights(trained_bundle: Path, tiny_root: Path, tmp_path: Path):
    """One epoch of pDDPM via ``pddpm train`` and via ``monai.bundle run training``: identical ``last.pt``."""
    cli_last = _cli_last(tiny_root, tmp_path / "cli", *CLI_TINY)
    bundle_last = torch.load(trained_bundle / "runs" / "fold0" / "last.pt", weights_only=True)
    _assert_same_run(cli_last, bundle_last)
    assert (tmp_path / "cli" / "train_config.json").is_file()


@pytest.mark.slow
def test_a_baseline_trains_through_the_bundle_as_through_the_cli(tiny_root: Path, tmp_path: Path):
    bundle = tmp_path / "bundle"
    _run([sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", "configs/train.json",
          "--meta_file", "configs/metadata.json", "--bundle_root", str(bundle), "--data_root", str(tiny_root),
          "--method", "ae", *TRAIN_ARGS, *CACHE_ARGS])  # fmt: skip
    bundle_last = torch.load(bundle / "runs" / "fold0" / "last.pt", weights_only=True)
    assert bundle_last["method"] == "ae" and (bundle / "runs" / "fold0" / "train_config.json").is_file()
    _assert_same_run(_cli_last(tiny_root, tmp_path / "cli", "--method", "ae"), bundle_last)
