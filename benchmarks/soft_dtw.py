"""Soft-DTW divergence, forward + backward, cosine cost: hf_dwakd.ops against pysdtw and tslearn.

Run: python benchmarks/soft_dtw.py [--repeats 5] [--sizes 256 512]
Every time printed comes from this one run; ratios are "their time / our time" (above 1: ours is faster).
On a CUDA machine it also times the GPU paths, including the per-example loop of the public DWA-KD code.
"""

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from hf_dwakd.ops import soft_dtw_divergence

BATCH, DIM, GAMMA = 8, 64, 2.0


def cosine_cost(a, b):
    return 1.0 - torch.bmm(F.normalize(a, dim=-1), F.normalize(b, dim=-1).transpose(1, 2))


def pysdtw_divergence(use_cuda):
    from pysdtw import SoftDTW

    sdtw = SoftDTW(gamma=GAMMA, dist_func=cosine_cost, use_cuda=use_cuda)
    return lambda x, y: sdtw(x, y) - 0.5 * (sdtw(x, x) + sdtw(y, y))


def per_example_loop(divergence):
    """One call per example, the way the public DWA-KD code drives its Soft-DTW."""
    return lambda x, y: torch.cat([divergence(x[b : b + 1], y[b : b + 1]) for b in range(x.shape[0])])


def tslearn_divergence():
    from tslearn.metrics import SoftDTWLossPyTorch

    return SoftDTWLossPyTorch(gamma=GAMMA, normalize=True, dist_func=cosine_cost)


def ours(backend):
    return lambda x, y: soft_dtw_divergence(x, y, GAMMA, backend=backend)


def time_fwd_bwd(divergence, x, y):
    """Seconds of one forward + backward, and the (B,) values."""
    a = x.detach().clone().requires_grad_(True)
    b = y.detach().clone().requires_grad_(True)
    if x.is_cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    values = divergence(a, b)
    values.sum().backward()
    if x.is_cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start, values.detach().float().cpu()


def median_times(contenders, x, y, repeats):
    """Per contender: median seconds and values, or the error it raised. Repeats take turns, so that a shared
    machine's changing load hits every contender alike; one untimed warm-up call each first (JIT compilation)."""
    times, values, errors = {name: [] for name in contenders}, {}, {}
    for attempt in range(repeats + 1):
        for name, divergence in contenders.items():
            if name in errors:
                continue
            try:
                seconds, values[name] = time_fwd_bwd(divergence, x, y)
            except Exception as error:  # a competitor's GPU path may not run here; report it, keep the others
                errors[name] = f"failed: {type(error).__name__}: {error}"[:100]
                continue
            if attempt:
                times[name].append(seconds)
    return {name: errors.get(name) or (statistics.median(times[name]), values[name]) for name in contenders}


def contenders(device):
    if device == "cpu":
        return {
            "ours (cpu)": ours("cpu"),
            "pysdtw (cpu)": pysdtw_divergence(use_cuda=False),
            "tslearn (normalize=True)": tslearn_divergence(),
        }
    return {
        "ours (triton)": ours("triton"),
        "pysdtw (cuda)": pysdtw_divergence(use_cuda=True),
        "per-example loop (pysdtw cuda)": per_example_loop(pysdtw_divergence(use_cuda=True)),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    args = parser.parse_args()
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    print(f"B={BATCH} d={DIM} gamma={GAMMA}, torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    for device in devices:
        for size in args.sizes:
            generator = torch.Generator().manual_seed(size)
            x = torch.randn(BATCH, size, DIM, generator=generator).to(device)
            y = torch.randn(BATCH, size, DIM, generator=generator).to(device)
            timings = median_times(contenders(device), x, y, args.repeats)
            ours_name, (ours_time, ours_values) = next(iter(timings.items()))
            print(
                f"\n{device} {size}x{size}: fwd+bwd, median of {args.repeats}; |value - ours| largest over the batch"
            )
            for name, result in timings.items():
                if isinstance(result, str):
                    print(f"  {name:32s} {result}")
                    continue
                seconds, values = result
                ratio = "" if name == ours_name else f"   {seconds / ours_time:5.1f}x ours"
                difference = (values - ours_values).abs().max().item()
                print(f"  {name:32s} {seconds * 1e3:9.1f} ms   |diff| {difference:.1e}{ratio}")


if __name__ == "__main__":
    main()
