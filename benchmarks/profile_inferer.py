"""Where the time of one patched-inference volume goes: noise, network passes, the rest.

Times, on the same device and in the same run: simplex noise for the 50 slices of a volume, the
200 network passes alone (one batch of 200 copies), and the whole batched inferer; then the
top operators of the profiler for one inferer call. The reference for the ratios is the whole
inferer.

Example::

    python benchmarks/profile_inferer.py --device cuda --dtype fp32
"""

from __future__ import annotations

import argparse

import torch
from _common import timed
from bench_inferer import DTYPES, build_network, describe_device, sync, with_autocast
from torch.profiler import ProfilerActivity, profile

from pddpm_monai.diffusion import DiffusionProcess, patch_grid
from pddpm_monai.inferers import patched_reconstruction


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="fp32", choices=sorted(DTYPES))
    parser.add_argument("--network", default="paper")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    device, dtype = args.device, DTYPES[args.dtype]
    run = with_autocast(build_network(args.network, device), device, dtype)
    process = DiffusionProcess()
    slices = torch.rand(50, 1, 96, 96, device=device)
    k = len(patch_grid(96, 96, 48, 48))
    copies = torch.rand(50 * k, 1, 96, 96, device=device)
    t = torch.full((50 * k,), 499, device=device, dtype=torch.long)
    gen = torch.Generator(device=device)

    def noise():
        gen.manual_seed(0)
        return process.noise_like(slices, generator=gen)

    def passes():
        with torch.no_grad():
            return run(copies, t)

    def inferer():
        gen.manual_seed(0)
        with torch.no_grad():
            return patched_reconstruction(slices, run, process, patch_size=48, max_batch=200, generator=gen)

    rows = {name: timed(fn, args.repeats, warmup=True, sync=sync(device))[0] for name, fn in
            (("simplex noise (50 slices)", noise), ("network, 200 copies in one batch", passes),
             ("whole batched inferer", inferer))}  # fmt: skip
    whole = rows["whole batched inferer"]
    print(
        f"device: {describe_device(device)}; dtype {args.dtype}; network {args.network}; torch {torch.__version__}"
    )
    print("| part | wall s/volume | share of the whole |")
    print("|---|---|---|")
    for name, seconds in rows.items():
        print(f"| {name} | {seconds:.4f} | {seconds / whole:.2f} |")
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    with profile(activities=activities) as prof:
        inferer()
        if device == "cuda":
            torch.cuda.synchronize()
    key = "cuda_time_total" if device == "cuda" else "cpu_time_total"
    print(prof.key_averages().table(sort_by=key, row_limit=15, max_name_column_width=40))


if __name__ == "__main__":
    main()
