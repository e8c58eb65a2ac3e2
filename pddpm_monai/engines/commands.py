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

from pddpm_monai.engines.trainer import TrainConfig
from pddpm_monai.methods import METHODS
from pddpm_monai.methods.config import config_to_dict

#: ``pddpm train`` options that go to the method's config: option dest -> (dotted) config key
METHOD_OPTIONS = {
    "patch_size": "patch_size",
    "t_test": "t_test",
    "sampling": "sampling",
    "patch_grid": "patch_grid",
    "loss": "loss",
    "noise": "diffusion.noise_type",
    "noise_standardize": "diffusion.simplex.standardize",
    "schedule": "diffusion.schedule",
    "timesteps": "diffusion.num_train_timesteps",
    "channels": "network.model_channels",
    "channel_mult": "network.channel_mult",
    "res_blocks": "network.num_res_blocks",
    "groups": "network.num_groups",
    "head_channels": "network.num_head_channels",
    # baselines (methods.baselines)
    "latent_size": "network.latent_size",
    "ae_channels": "network.channels",
    "beta": "beta",
    "context": "context",
    "gan_iterations": "gan_iterations",
}

#: the methods ``pddpm train`` offers
TRAIN_METHODS = tuple(METHODS)

#: ``pddpm train`` options that go to TrainConfig: option dest -> field
TRAIN_OPTIONS = {
    "data_root": "data_root",
    "out": "out_dir",
    "fold": "fold",
    "method": "method",
    "epochs": "epochs",
    "batch_size": "batch_size",
    "slices_per_volume": "slices_per_volume",
    "lr": "lr",
    "device": "device",
    "seed": "seed",
    "val_slices": "val_slices_per_volume",
    "val_interval": "val_interval",
    "cache": "cache",
    "workers": "num_workers",
    "checkpoint_every": "checkpoint_every",
    "image_interval": "image_interval",
}


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
    p.add_argument("--data-root", required=True, help="data root (Train/ixi, splits/)")
    p.add_argument("--out", required=True, help="output folder of the run")
    p.add_argument("--fold", type=int, help="cross-validation fold 0-4 (default {default})")
    p.add_argument("--method", choices=TRAIN_METHODS, help="method (default {default})")
    p.add_argument("--patch-size", type=int, help="patch side on the 96x96 slices (default {default}; pddpm)")
    p.add_argument("--t-test", type=int, help="test timestep (default {default})")
    p.add_argument(
        "--sampling", choices=("fixed", "random"), help="training patch positions (default {default})"
    )
    p.add_argument(
        "--patch-grid",
        choices=("overlap", "tile"),
        help="patch grid when the patch does not divide 96 (default {default}; tile: the authors')",
    )
    p.add_argument(
        "--loss", choices=("patch", "full"), help="L_p (patch) or L_rec (full) (default {default})"
    )
    p.add_argument("--noise", choices=("simplex", "gaussian"), help="noise of q(x_t|x_0) (default {default})")
    p.add_argument(
        "--schedule",
        choices=("cosine", "linear_beta", "scaled_linear_beta", "sigmoid_beta"),
        help="noise schedule (default {default}; cosine is the authors' code, linear_beta the paper's text)",
    )
    p.add_argument(
        "--noise-standardize",
        action="store_true",
        default=None,
        help="unit-variance simplex fields (the paper's text; default: the raw octave sum, the authors' code)",
    )
    p.add_argument("--timesteps", type=int, help="number of diffusion timesteps T (default {default})")
    p.add_argument("--channels", type=int, help="UNet model channels (default {default})")
    p.add_argument("--channel-mult", type=int, nargs="+", help="UNet channel multipliers (default {default})")
    p.add_argument("--res-blocks", type=int, help="residual blocks per level (default {default})")
    p.add_argument("--groups", type=int, help="GroupNorm groups (default {default})")
    p.add_argument("--head-channels", type=int, help="channels per attention head (default {default})")
    p.add_argument("--latent-size", type=int, help="latent size (default {default}; ae, vae, svae, fanogan)")
    p.add_argument(
        "--ae-channels",
        type=int,
        nargs="+",
        help="channels per level (default {default}; ae, vae, svae, dae, fanogan)",
    )
    p.add_argument("--beta", type=float, help="KL weight beta_VAE (default {default}; vae, svae)")
    p.add_argument("--context", type=int, help="neighbouring slices on each side (default {default}; svae)")
    p.add_argument(
        "--gan-iterations",
        type=int,
        help="WGAN-GP iterations before the encoder (default {default}; fanogan)",
    )
    p.add_argument("--epochs", type=int, help="epochs (default {default})")
    p.add_argument(
        "--batch-size",
        type=_positive,
        help="slices per batch (default {default}; an epoch draws slices-per-volume x training volumes slices)",
    )
    p.add_argument(
        "--slices-per-volume",
        type=_positive,
        help="training slices drawn per volume and epoch (default {default}, the authors')",
    )
    p.add_argument("--lr", type=float, help="Adam learning rate (default {default}, the authors' config)")
    p.add_argument("--device", help="auto, cpu, cuda, cuda:N (default {default})")
    p.add_argument("--seed", type=int, help="seed of all random draws (default {default})")
    p.add_argument(
        "--val-slices", type=int, help="validation slices per volume (default {default}; 0 = every slice)"
    )
    p.add_argument("--val-interval", type=int, help="validate every N epochs (default {default}; 0 = never)")
    p.add_argument("--cache", choices=("memory", "disk", "none"), help="volume cache (default {default})")
    p.add_argument("--workers", type=int, help="DataLoader workers (default {default})")
    p.add_argument(
        "--checkpoint-every", type=int, help="also save last.pt every N iterations (default {default})"
    )
    p.add_argument(
        "--image-interval", type=int, help="TensorBoard image grid every N epochs (default {default})"
    )
    p.add_argument(
        "--amp", action="store_true", help="bf16 autocast on CUDA (default: fp32, as the authors train)"
    )
    p.add_argument("--no-resume", action="store_true", help="start over even if <out>/last.pt exists")
    p.add_argument("--skip-empty-slices", action="store_true", help="draw only training slices with brain")
    p.add_argument("--progress", action="store_true", help="show a progress bar")
    p.set_defaults(func=run_train)
    _fill_defaults(p)


def _option_defaults() -> dict[str, Any]:
    """``pddpm train`` option dest -> its default: TrainConfig's, else the first method config that has it."""
    train = TrainConfig()
    out = {dest: getattr(train, name) for dest, name in TRAIN_OPTIONS.items()}
    configs = [config_to_dict(cls.config_class()) for cls in METHODS.values()]
    for dest, key in METHOD_OPTIONS.items():
        for config in configs:
            node: Any = config
            for part in key.split("."):
                node = node.get(part) if isinstance(node, dict) else None
            if node is not None:
                out[dest] = node
                break
    return out


def _fill_defaults(parser: argparse.ArgumentParser) -> None:
    """Write the dataclass defaults into the help texts' ``{default}``."""
    defaults = _option_defaults()
    for action in parser._actions:
        if action.help and "{default}" in action.help:
            value = defaults[action.dest]
            text = " ".join(map(str, value)) if isinstance(value, list | tuple) else str(value)
            action.help = action.help.replace("{default}", text)


def _positive(text: str) -> int:
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


def train_config_from_args(args: argparse.Namespace) -> Any:
    """The :class:`~pddpm_monai.engines.trainer.TrainConfig` that ``pddpm train`` options describe."""
    from pddpm_monai.engines.trainer import TrainConfig

    changes: dict[str, Any] = {}
    for dest, name in TRAIN_OPTIONS.items():
        value = getattr(args, dest, None)
        if value is not None:
            changes[name] = str(value) if name in ("data_root", "out_dir") else value
    if changes.get("val_slices_per_volume") == 0:
        changes["val_slices_per_volume"] = None
    options = {key: getattr(args, dest, None) for dest, key in METHOD_OPTIONS.items()}
    changes["method_options"] = {k: v for k, v in options.items() if v is not None}
    changes["amp"] = args.amp
    changes["resume"] = not args.no_resume
    changes["skip_empty_slices"] = args.skip_empty_slices
    changes["progress"] = args.progress
    return dataclasses.replace(TrainConfig(), **changes)


def run_train(args: argparse.Namespace) -> int:
    """``pddpm train``: train or resume; prints the checkpoint to use."""
    from pddpm_monai.engines.trainer import train

    best = train(train_config_from_args(args))
    print(best)
    return 0


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".nii.gz", ".nii"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def run_reconstruct(args: argparse.Namespace) -> int:
    """``pddpm reconstruct``: model-grid input, reconstruction and anomaly map as NIfTI."""
    from pddpm_monai.methods.checkpoint import load_scorer
    from pddpm_monai.transforms.loading import model_grid_transforms
    from pddpm_monai.utils import ensure_output_dir, read_nifti, resolve_device, save_nifti

    image_path = Path(args.image)
    mask_path = Path(args.mask) if args.mask else None
    out = ensure_output_dir(args.out)
    name = args.name or _stem(image_path)
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
