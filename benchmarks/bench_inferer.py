"""Benchmark: batched patched inference vs the authors' sequential loop on a 96 x 96 x 50 volume.

The reference ("sequential", the authors' ``DDPM_2D_patched.test_step``) makes the simplex noise on
the CPU and moves it to the device, loops over the K patch positions, builds each partly noised
batch by copying every slice's box in a Python loop, runs the network on all slices, and stitches
slice by slice. The candidate is ``PatchedDiffusionInferer`` in ``batched`` mode (all B * K partly
noised copies, chunks of ``max_batch``, noise made on the device), for several ``max_batch``.
Both see the same noise (the same generator seed), so their outputs must agree; the script prints
the max abs difference.

Volumes/s are per 50-slice volume. With ``--measure-slices N < 50`` only N slices are run and the
time is scaled by 50 / N (for the paper-size network on a CPU, which needs minutes per volume).

``--paths`` adds, in the same run, the inferer's precision paths (``precision=`` of
``patched_reconstruction``, see ``pddpm_monai.inferers.precision``) at the first ``max_batch``,
each on its own copy of the same weights, with the speed-up against the eager fp32 batched row:
``fp32`` (the reference), ``auto`` (fp32, channels-last on the CPU), ``bf16`` (autocast), and
``compile`` / ``compile-auto`` (``torch.compile`` of the network, inductor with weight freezing, on
the fp32 / auto path). ``--volumes 1,10`` times 1 and 10 volumes one after another (as evaluation
runs them) for every path and prints how the time grows.

Examples::

    python benchmarks/bench_inferer.py --network small --max-batch 4,16,64,200
    python benchmarks/bench_inferer.py --network paper --measure-slices 4 --max-batch 1,4,16 --repeats 1
    python benchmarks/bench_inferer.py --network paper --measure-slices 2 --max-batch 8 \\
        --paths fp32,auto,compile-auto --volumes 1,10 --repeats 1
    python benchmarks/bench_inferer.py --device cuda --dtype bf16 --channels-last --compile --max-batch 50,100,200
"""

from __future__ import annotations

import argparse
import copy
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
from _common import cpu_model, load_average, timed
from torch import Tensor

from pddpm_monai.diffusion import DiffusionProcess, patch_grid
from pddpm_monai.inferers import patched_reconstruction
from pddpm_monai.networks import DiffusionUNet
from pddpm_monai.threads import set_threads

NETWORKS = {
    "paper": {},
    "small": dict(
        model_channels=32, channel_mult=(1, 2, 2), num_res_blocks=1, num_groups=8, num_head_channels=32
    ),
}
VOLUME_SLICES = 50
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
INIT_STD = 0.02


@dataclass
class Timing:
    name: str
    seconds_per_volume: float
    cpu_seconds_per_volume: float
    output: Tensor


def build_network(kind: str, device: str) -> torch.nn.Module:
    """The network with its zero-initialised layers randomised (so outputs are non-trivial)."""
    net = DiffusionUNet(**NETWORKS[kind])
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in net.parameters():
            if torch.count_nonzero(p) == 0 and p.ndim > 1:
                p.copy_(torch.randn(p.shape, generator=gen) * INIT_STD)
    return net.to(device).eval()


def with_autocast(
    network: torch.nn.Module, device: str, dtype: torch.dtype
) -> Callable[[Tensor, Tensor], Tensor]:
    """``network`` under autocast to ``dtype`` (itself for fp32)."""
    if dtype == torch.float32:
        return network

    def run(x: Tensor, t: Tensor) -> Tensor:
        with torch.autocast(device_type=device, dtype=dtype):
            return network(x, t)

    return run


def authors_loop(
    slices: Tensor,
    network: Callable[[Tensor, Tensor], Tensor],
    process: DiffusionProcess,
    *,
    t_test: int,
    patch: int,
    seed: int,
) -> Tensor:
    """The authors' procedure: CPU noise, loop over positions, per-slice box copies and stitching."""
    generator = torch.Generator().manual_seed(seed)
    x0 = process.to_model_space(slices)
    noise = process.noise_like(x0.cpu(), generator=generator).to(slices.device)  # made on the CPU
    t = torch.full((slices.shape[0],), t_test - 1, device=slices.device, dtype=torch.long)
    x_t = process.add_noise(x0, noise, t)
    total, count = torch.zeros_like(x0), torch.zeros_like(x0)
    for y0, x0_ in patch_grid(*slices.shape[-2:], patch, patch):
        rows, cols = slice(y0, y0 + patch), slice(x0_, x0_ + patch)
        noised = x0.clone()
        for j in range(slices.shape[0]):
            noised[j, :, rows, cols] = x_t[j, :, rows, cols]
        prediction = network(noised, t).float()
        for j in range(slices.shape[0]):
            total[j, :, rows, cols] += prediction[j, :, rows, cols]
            count[j, :, rows, cols] += 1
    return process.from_model_space(total / count)


def batched(slices: Tensor, network, process, args, max_batch: int, precision: str | None = None) -> Tensor:
    """``patched_reconstruction`` in batched mode with the run's settings and noise seed."""
    return patched_reconstruction(
        slices, network, process, t_test=args.t_test, patch_size=args.patch, max_batch=max_batch,
        generator=torch.Generator().manual_seed(args.seed), precision=precision,
    )  # fmt: skip


def sync(device: str) -> Callable[[], None]:
    """What waits for the device's queued work before a clock is read."""
    return torch.cuda.synchronize if device == "cuda" else lambda: None


def describe_device(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    return f"{cpu_model()}, {torch.get_num_threads()} threads"


def report(timing: Timing, base: Timing) -> None:
    """One markdown table row: time, throughput, speed-up and output difference against ``base``."""
    diff = (timing.output.float() - base.output.float()).abs().max().item()
    print(
        f"| {timing.name} | {timing.seconds_per_volume:.3f} | {1 / timing.seconds_per_volume:.3f} | "
        f"{base.seconds_per_volume / timing.seconds_per_volume:.2f}x | {timing.cpu_seconds_per_volume:.2f} | "
        f"{base.cpu_seconds_per_volume / timing.cpu_seconds_per_volume:.2f}x | {diff:.2e} |",
        flush=True,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default="fp32", choices=sorted(DTYPES))
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--network", default="paper", choices=sorted(NETWORKS))
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--patch", type=int, default=48)
    parser.add_argument("--t-test", type=int, default=500)
    parser.add_argument(
        "--measure-slices", type=int, default=VOLUME_SLICES, help="slices run; time scaled to 50"
    )
    parser.add_argument("--max-batch", default="16,64,200", help="comma-separated max_batch values")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: pddpm's policy)")
    parser.add_argument(
        "--paths", default="", help="precision paths side by side: fp32,auto,bf16,compile,compile-auto"
    )
    parser.add_argument("--volumes", default="", help="volume counts timed per path, e.g. 1,10")
    args = parser.parse_args(argv)
    set_threads(args.threads or None)

    device, dtype = args.device, DTYPES[args.dtype]
    torch.manual_seed(args.seed)
    slices = torch.rand(args.measure_slices, 1, args.size, args.size, device=device)
    process = DiffusionProcess()
    base_network = build_network(args.network, device)
    network = copy.deepcopy(base_network) if args.channels_last or args.compile else base_network
    network = network.to(memory_format=torch.channels_last) if args.channels_last else network
    network = torch.compile(network) if args.compile else network
    network = with_autocast(network, device, dtype)
    scale = VOLUME_SLICES / args.measure_slices
    num_positions = len(patch_grid(args.size, args.size, args.patch, args.patch))

    print(
        f"device: {describe_device(device)}; dtype {args.dtype}; channels_last {args.channels_last}; "
        f"compile {args.compile}; network {args.network}; {args.size}x{args.size}x{VOLUME_SLICES} volume, "
        f"patch {args.patch} (K={num_positions}); measured on {args.measure_slices} slices, "
        f"best of {args.repeats}; torch {torch.__version__}; load average {load_average()}"
    )
    print(
        "| mode | wall s/volume | volumes/s | wall speed-up | CPU s/volume | CPU speed-up "
        "| max abs diff vs sequential |"
    )
    print("|---|---|---|---|---|---|---|", flush=True)
    with torch.inference_mode():
        loop = partial(
            authors_loop, slices, network, process, t_test=args.t_test, patch=args.patch, seed=args.seed
        )
        wall, cpu, reference = timed(loop, args.repeats, warmup=True, sync=sync(device))
        base = Timing("sequential (authors' loop)", wall * scale, cpu * scale, reference)
        report(base, base)
        for max_batch in (int(v) for v in args.max_batch.split(",")):
            run = partial(batched, slices, network, process, args, max_batch)
            wall, cpu, output = timed(run, args.repeats, warmup=True, sync=sync(device))
            report(Timing(f"batched, max_batch={max_batch}", wall * scale, cpu * scale, output), base)
        if args.paths:
            compare_paths(args, base_network, slices, process, reference)
    return 0


def path_network(base: torch.nn.Module, path: str) -> torch.nn.Module:
    """A copy of ``base`` (same weights) prepared for ``path``: compiled for ``compile*`` paths."""
    network = copy.deepcopy(base)
    if path.startswith("compile"):
        import torch._inductor.config as inductor_config

        inductor_config.freezing = True  # constant weights: folded and pre-packed for oneDNN
        if path == "compile-auto" and next(network.parameters()).device.type == "cpu":
            network = network.to(memory_format=torch.channels_last)
        network = torch.compile(network)
    return network


def compare_paths(args, base: torch.nn.Module, slices: Tensor, process, reference: Tensor) -> None:
    """The precision paths at the first ``max_batch`` side by side, ratios against eager fp32."""
    max_batch = int(args.max_batch.split(",")[0])
    scale = VOLUME_SLICES / args.measure_slices
    volume_counts = [int(v) for v in args.volumes.split(",") if v] or [1]
    print(
        f"\nprecision paths, batched, max_batch={max_batch}; per 50-slice volume (x{scale:g}); "
        f"load average {load_average()}"
    )
    head = " | ".join(f"{n} vol wall s | {n} vol speed-up" for n in volume_counts)
    head += " | CPU s/volume | CPU speed-up"
    print(f"| path | compile/first call s | {head} | volumes/s | growth {volume_counts[-1]}/{volume_counts[0]} "
          "| max abs diff vs loop |")  # fmt: skip
    print("|---|---|" + "---|---|" * (len(volume_counts) + 1) + "---|---|---|", flush=True)
    results: dict[str, list[float]] = {}
    wait = sync(args.device)
    for path in args.paths.split(","):
        precision = "auto" if path == "compile-auto" else ("fp32" if path == "compile" else path)
        network = path_network(base, path)

        def volumes(count: int = 1, network=network, precision=precision) -> Tensor:
            for _ in range(count):
                output = batched(slices, network, process, args, max_batch, precision)
            return output

        first, _, output = timed(volumes, 1, sync=wait)  # warm-up, compilation
        walls = []
        for count in volume_counts:  # already warm: no extra warm-up call
            best, best_cpu, _ = timed(partial(volumes, count), args.repeats, sync=wait)
            walls.append(best * scale)
        cpu = best_cpu * scale / volume_counts[-1]
        results[path] = walls + [cpu]
        ref = results.get("fp32", results[path])
        cells = " | ".join(f"{w:.2f} | {r / w:.2f}x" for w, r in zip(walls, ref))
        cells += f" | {cpu:.1f} | {ref[-1] / cpu:.2f}x"
        diff = (output.float() - reference.float()).abs().max().item()
        print(
            f"| {path} | {first:.1f} | {cells} | {volume_counts[-1] / walls[-1]:.4f} | "
            f"{walls[-1] / walls[0]:.2f} | {diff:.1e} |",
            flush=True,
        )
    print(f"load average at the end {load_average()}")


if __name__ == "__main__":
    raise SystemExit(main())
