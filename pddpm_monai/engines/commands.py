"""``pddpm train`` and ``pddpm reconstruct`` (registered by :mod:`pddpm_monai.cli`).

Thin wrappers: options left out keep the defaults of :class:`~pddpm_monai.engines.trainer.TrainConfig`
and of the method's config dataclass (the one place where defaults live), so every option here
defaults to ``None``; the help texts read those defaults (``{default}``, filled by
:func:`_fill_defaults`).
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

from pddpm_monai.diffusion.patches import PATCH_GRIDS
from pddpm_monai.engines.trainer import TrainConfig, train
from pddpm_monai.methods import METHODS
from pddpm_monai.methods.config import config_to_dict

#: the methods ``pddpm train`` offers
TRAIN_METHODS = tuple(METHODS)
#: the TrainConfig fields; the other ``pddpm train`` options go to the method's config
_TRAIN_FIELDS = {f.name for f in dataclasses.fields(TrainConfig)}


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Register ``train`` and ``reconstruct``."""
    _add_train(subparsers)
    _add_reconstruct(subparsers)


def _add_train(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train",
        help="train a pDDPM, DDPM or a Table 1 baseline on the healthy IXI split of a data root",
        description="Train with MONAI engines; resumes from <out>/last.pt; writes best.pt (lowest validation "
        "loss), last.pt, train_config.json and TensorBoard logs. Options left out keep the defaults of "
        "TrainConfig and of the method's config.",
    )
    keys: dict[str, str] = {}  # option dest -> TrainConfig field, else (dotted) key of the method's config

    def option(flag: str, key: str | None = None, **kwargs: Any) -> None:
        dest = p.add_argument(flag, **kwargs).dest
        keys[dest] = key or dest

    option("--data-root", required=True, help="data root (Train/ixi, splits/)")
    option("--out", "out_dir", required=True, help="output folder of the run")
    option("--fold", type=int, help="cross-validation fold 0-4 (default {default})")
    option("--method", choices=TRAIN_METHODS, help="method (default {default})")
    option("--patch-size", type=int, help="patch side on the 96x96 slices (default {default}; pddpm)")
    option("--t-test", type=int, help="test timestep (default {default})")
    option("--sampling", choices=("fixed", "random"), help="training patch positions (default {default})")
    option(
        "--patch-grid",
        choices=PATCH_GRIDS,
        help="patch grid (default {default}; tile: the authors' when the patch does not divide 96; "
        "blend: half-stride boxes, Gaussian-weighted, usually an inference option)",
    )
    option("--loss", choices=("patch", "full"), help="L_p (patch) or L_rec (full) (default {default})")
    option(
        "--noise",
        "diffusion.noise_type",
        choices=("simplex", "gaussian"),
        help="noise of q(x_t|x_0) (default {default})",
    )
    option(
        "--schedule",
        "diffusion.schedule",
        choices=("cosine", "linear_beta", "scaled_linear_beta", "sigmoid_beta"),
        help="noise schedule (default {default}; cosine is the authors' code, linear_beta the paper's text)",
    )
    option(
        "--noise-standardize",
        "diffusion.simplex.standardize",
        action="store_true",
        default=None,
        help="unit-variance simplex fields (the paper's text; default: the raw octave sum, the authors' code)",
    )
    option(
        "--timesteps",
        "diffusion.num_train_timesteps",
        type=int,
        help="number of diffusion timesteps T (default {default})",
    )
    option("--channels", "network.model_channels", type=int, help="UNet model channels (default {default})")
    option(
        "--channel-mult",
        "network.channel_mult",
        type=int,
        nargs="+",
        help="UNet channel multipliers (default {default})",
    )
    option(
        "--res-blocks",
        "network.num_res_blocks",
        type=int,
        help="residual blocks per level (default {default})",
    )
    option("--groups", "network.num_groups", type=int, help="GroupNorm groups (default {default})")
    option(
        "--head-channels",
        "network.num_head_channels",
        type=int,
        help="channels per attention head (default {default})",
    )
    option(
        "--latent-size",
        "network.latent_size",
        type=int,
        help="latent size (default {default}; ae, vae, svae, fanogan)",
    )
    option(
        "--ae-channels",
        "network.channels",
        type=int,
        nargs="+",
        help="channels per level (default {default}; ae, vae, svae, dae, fanogan)",
    )
    option("--beta", type=float, help="KL weight beta_VAE (default {default}; vae, svae)")
    option("--context", type=int, help="neighbouring slices on each side (default {default}; svae)")
    option(
        "--gan-iterations",
        type=int,
        help="WGAN-GP iterations before the encoder (default {default}; fanogan)",
    )
    option("--epochs", type=int, help="epochs (default {default})")
    option(
        "--batch-size",
        type=positive_int,
        help="slices per batch (default {default}; an epoch draws slices-per-volume x training volumes slices)",
    )
    option(
        "--slices-per-volume",
        type=positive_int,
        help="training slices drawn per volume and epoch (default {default}, the authors')",
    )
    option("--lr", type=float, help="Adam learning rate (default {default}, the authors' config)")
    option("--device", help="auto, cpu, cuda, cuda:N (default {default})")
    option("--seed", type=int, help="seed of all random draws (default {default})")
    option(
        "--val-slices",
        "val_slices_per_volume",
        type=int,
        help="validation slices per volume (default {default}; 0 = every slice)",
    )
    option("--val-interval", type=int, help="validate every N epochs (default {default}; 0 = never)")
    option("--cache", choices=("memory", "disk", "none"), help="volume cache (default {default})")
    option("--workers", "num_workers", type=int, help="DataLoader workers (default {default})")
    option("--checkpoint-every", type=int, help="also save last.pt every N iterations (default {default})")
    option("--image-interval", type=int, help="TensorBoard image grid every N epochs (default {default})")
    option("--amp", action="store_true", help="bf16 autocast on CUDA (default: fp32, as the authors train)")
    option("--no-resume", action="store_false", dest="resume", help="start over even if <out>/last.pt exists")
    option("--skip-empty-slices", action="store_true", help="draw only training slices with brain")
    option("--progress", action="store_true", help="show a progress bar")
    p.set_defaults(func=run_train, config_keys=keys)
    _fill_defaults(p, keys)


def _fill_defaults(parser: argparse.ArgumentParser, keys: dict[str, str]) -> None:
    """Write the defaults of TrainConfig, else of the first method config that has the key, into ``{default}``."""
    train = TrainConfig()
    configs = [config_to_dict(cls.config_class()) for cls in METHODS.values()]
    for action in parser._actions:
        if not (action.help and "{default}" in action.help):
            continue
        key = keys[action.dest]
        if key in _TRAIN_FIELDS:
            value = getattr(train, key)
        else:
            for config in configs:
                value = config
                for part in key.split("."):
                    value = value.get(part) if isinstance(value, dict) else None
                if value is not None:
                    break
        text = " ".join(map(str, value)) if isinstance(value, list | tuple) else str(value)
        action.help = action.help.replace("{default}", text)


def positive_int(text: str) -> int:
    """A positive integer option value."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return int(text)


def _add_reconstruct(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "reconstruct",
        help="reconstruction and anomaly map of one data-root-like scan with a trained checkpoint",
        description="Loads a scan in atlas space (as in the data root: 192x192x160 after preprocessing) onto "
        "the model grid (96x96x50) and writes <name>_input, <name>_reconstruction and <name>_anomaly "
        "NIfTIs on the model grid. Finished outputs are skipped unless --overwrite.",
    )
    p.add_argument("--checkpoint", required=True, help="best.pt / last.pt of a training run")
    p.add_argument("--image", required=True, help="T2 NIfTI in atlas space (skull-stripped)")
    p.add_argument(
        "--mask", help="brain mask NIfTI (intensity percentiles inside it; anomaly map zero outside)"
    )
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--name", help="output name prefix (default: the image file name without suffix)")
    p.add_argument("--t-test", type=int, help="test timestep (default: the checkpoint's)")
    p.add_argument("--patch-size", type=int, help="patch size (pddpm; default: the checkpoint's)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N (default auto)")
    p.add_argument("--seed", type=int, default=0, help="seed of the test-time noise (default 0)")
    p.add_argument("--overwrite", action="store_true", help="recompute existing outputs")
    p.set_defaults(func=run_reconstruct)


def train_config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The :class:`~pddpm_monai.engines.trainer.TrainConfig` that ``pddpm train`` options describe."""
    changes: dict[str, Any] = {"method_options": {}}
    for dest, key in args.config_keys.items():
        value = getattr(args, dest)
        if value is not None:
            (changes if key in _TRAIN_FIELDS else changes["method_options"])[key] = value
    if changes.get("val_slices_per_volume") == 0:
        changes["val_slices_per_volume"] = None
    return dataclasses.replace(TrainConfig(), **changes)


def run_train(args: argparse.Namespace) -> int:
    """``pddpm train``: train or resume; prints the checkpoint to use."""
    print(train(train_config_from_args(args)))
    return 0


def run_reconstruct(args: argparse.Namespace) -> int:
    """``pddpm reconstruct``: model-grid input, reconstruction and anomaly map as NIfTI."""
    from pddpm_monai.methods.checkpoint import load_scorer
    from pddpm_monai.transforms.loading import model_grid_transforms
    from pddpm_monai.transforms.scan_io import scan_name
    from pddpm_monai.utils import ensure_output_dir, read_nifti, resolve_device, save_nifti

    image_path = Path(args.image)
    mask_path = Path(args.mask) if args.mask else None
    out = ensure_output_dir(args.out)
    name = args.name or scan_name(image_path)
    outputs = {kind: out / f"{name}_{kind}.nii.gz" for kind in ("input", "reconstruction", "anomaly")}
    if not args.overwrite and all(p.is_file() for p in outputs.values()):
        print(f"{out}: outputs of {name} exist, skipped (use --overwrite)")
        return 0
    scorer = load_scorer(
        args.checkpoint,
        t_test=args.t_test,
        patch_size=args.patch_size,
        device=resolve_device(args.device),
        seed=args.seed,
    )
    read_nifti(image_path)  # one-line errors for unreadable / 2-D / NaN / empty files
    item = {"image": str(image_path)}
    if mask_path is not None:
        read_nifti(mask_path)
        item["mask"] = str(mask_path)
    loaded = model_grid_transforms(tuple(item))(item)
    image = loaded["image"]
    affine = image.affine.numpy()
    recon, anomaly = scorer(image.as_tensor(), loaded["mask"].as_tensor() if "mask" in loaded else None)
    for kind, volume in (("input", image.as_tensor()), ("reconstruction", recon), ("anomaly", anomaly)):
        save_nifti(volume[0].detach().cpu().numpy().astype("float32"), affine, outputs[kind])
    for path in outputs.values():
        print(path)
    return 0
