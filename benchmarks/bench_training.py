"""Training data path and engine overhead.

1. Volume caching: one training epoch of random axial slices read through ``volume_dataset`` with
   ``cache="none"`` (every item re-reads and re-preprocesses its NIfTI volume, as a loader without
   a cache does) vs ``cache="memory"`` (MONAI ``CacheDataset``: preprocessed once).
2. Engine overhead: iterations/s of the MONAI ``SupervisedTrainer`` built by ``build_trainer``
   (stats, TensorBoard, checkpoint handlers attached) vs a bare Python loop calling
   ``method.train_iteration`` on the same batches.
3. ``--threads 1,2``: slices/s of the bare loop with each torch thread count, in the same run
   (ratio against the first count); on a shared machine the load average is printed with it.

Usage:
    python benchmarks/bench_training.py [--volumes 4] [--iterations 20] [--device cpu] [--channels 32]
    python benchmarks/bench_training.py --only-threads --threads 1,2 --iterations 5 --channels 32
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from _common import load_average
from torch.utils.data import DataLoader

from pddpm_monai.data.dataset import RandomSliceDataset, volume_dataset
from pddpm_monai.engines.trainer import TrainConfig, build_loaders, build_method_for, build_trainer

ATLAS_SHAPE = (192, 192, 160)


def write_volumes(folder: Path, count: int) -> list[dict[str, str]]:
    """``count`` smooth ellipsoid 'brains' in atlas space (192x192x160) with masks."""
    rng = np.random.default_rng(0)
    zz, yy, xx = np.meshgrid(*(np.arange(n, dtype=np.float32) for n in ATLAS_SHAPE), indexing="ij")
    r = ((zz - 96) / 70) ** 2 + ((yy - 96) / 80) ** 2 + ((xx - 80) / 65) ** 2
    mask = (r < 1).astype(np.uint8)
    items = []
    for i in range(count):
        image = mask * (300 + 200 * np.cos(zz / (8 + i)) * np.sin(yy / 11) + rng.normal(0, 10, ATLAS_SHAPE))
        paths = {"image": folder / f"s{i}_t2.nii.gz", "mask": folder / f"s{i}_mask.nii.gz"}
        nib.save(nib.Nifti1Image(image.astype(np.float32), np.eye(4)), str(paths["image"]))
        nib.save(nib.Nifti1Image(mask, np.eye(4)), str(paths["mask"]))
        items.append({k: str(v) for k, v in paths.items()})
    return items


def epoch_seconds(volumes) -> float:
    ds = RandomSliceDataset(volumes, seed=0)
    start = time.perf_counter()
    for item in ds:
        assert item["image"].shape == (1, 96, 96)
    return time.perf_counter() - start


def bench_cache(items) -> dict:
    uncached = volume_dataset(items, cache="none")
    start = time.perf_counter()
    cached = volume_dataset(items, cache="memory", num_workers=1)
    build = time.perf_counter() - start
    t_none, t_mem = epoch_seconds(uncached), epoch_seconds(cached)
    return {
        "volumes": len(items),
        "epoch_s_no_cache": round(t_none, 3),
        "epoch_s_cached": round(t_mem, 5),
        "cache_build_s": round(build, 3),
        "speedup_per_epoch": round(t_none / t_mem, 1),
    }


def run_setup(device: str, iterations: int, channels: int, out_dir: Path) -> tuple[TrainConfig, DataLoader]:
    """A one-epoch run of ``iterations`` batches of 8 random slices, with a small network."""
    gen = torch.Generator().manual_seed(0)
    volumes = [{"image": torch.rand(1, 96, 96, 50, generator=gen)} for _ in range(8)]
    options = {"network": {"model_channels": channels, "channel_mult": [1, 2, 2], "num_res_blocks": 1}}
    # 8 volumes x ``iterations`` slices / batch 8 = ``iterations`` per epoch
    config = TrainConfig(
        out_dir=str(out_dir), method_options=options, batch_size=8, slices_per_volume=iterations,
        epochs=1, device=device, image_interval=0, resume=False,
    )  # fmt: skip
    return config, build_loaders(config, volumes)[0]


def bare_loop_seconds(config: TrainConfig, images: list[torch.Tensor], sync: Callable[[], Any]) -> float:
    """Seconds of the bare loop (the reference): the method's optimiser steps on ``images``, no engine."""
    method = build_method_for(config).to(config.device)
    optimizer = method.configure_optimizer(config.lr)
    rng = torch.Generator().manual_seed(0)
    method.train_iteration(images[0].to(config.device), optimizer, generator=rng)  # warm-up
    sync()
    start = time.perf_counter()
    for image in images:
        method.train_iteration(image.to(config.device), optimizer, generator=rng)
    sync()
    return time.perf_counter() - start


def bench_engine(device: str, iterations: int, channels: int, out_dir: Path) -> dict:
    config, loader = run_setup(device, iterations, channels, out_dir)
    method = build_method_for(config)
    batches = list(loader)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    t_bare = bare_loop_seconds(config, [b["image"] for b in batches], sync)

    trainer = build_trainer(config, method, loader)
    rng = torch.Generator().manual_seed(0)
    method.train_iteration(batches[0]["image"].to(device), trainer.optimizer, generator=rng)  # warm-up
    sync()
    start = time.perf_counter()
    trainer.run()
    sync()
    t_engine = time.perf_counter() - start
    return {
        "iterations": len(batches),
        "bare_it_per_s": round(len(batches) / t_bare, 2),
        "engine_it_per_s": round(len(batches) / t_engine, 2),
        "engine_over_bare_time": round(t_engine / t_bare, 3),
    }


def bench_threads(device: str, iterations: int, channels: int, counts: list[int], out_dir: Path) -> dict:
    """Slices/s of the bare training loop for each torch thread count (same batches, same weights)."""
    config, loader = run_setup(device, iterations, channels, out_dir)
    batches = [b["image"].to(device) for b in loader]
    before = torch.get_num_threads()
    result = {}
    for count in counts:
        torch.set_num_threads(count)
        torch.manual_seed(0)
        seconds = bare_loop_seconds(config, batches, lambda: None)
        result[f"threads_{count}_slices_per_s"] = round(len(batches) * config.batch_size / seconds, 2)
    torch.set_num_threads(before)
    first = result[f"threads_{counts[0]}_slices_per_s"]
    for count in counts[1:]:
        result[f"ratio_{count}_vs_{counts[0]}"] = round(result[f"threads_{count}_slices_per_s"] / first, 2)
    result["load_average"] = load_average().split()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--volumes", type=int, default=4)
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--channels", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", default="", help="torch thread counts compared, e.g. 1,2")
    parser.add_argument("--only-threads", action="store_true", help="skip the cache and engine parts")
    args = parser.parse_args()
    torch.manual_seed(0)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        if not args.only_threads:
            items = write_volumes(Path(tmp), args.volumes)
            results["cache"] = bench_cache(items)
            results["engine"] = bench_engine(args.device, args.iterations, args.channels, Path(tmp) / "run")
        if args.threads:
            counts = [int(c) for c in args.threads.split(",")]
            results["threads"] = bench_threads(
                args.device, args.iterations, args.channels, counts, Path(tmp) / "t"
            )
    results["args"] = vars(args)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
