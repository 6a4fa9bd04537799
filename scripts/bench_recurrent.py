"""Forward time of the recurrent engines against causal SDPA, on this machine's CPU.

Times :func:`variants.engines.decay.decay_attention` and :func:`variants.engines.delta.delta_rule`
(without and with the gate) for a few chunk sizes, and
``torch.nn.functional.scaled_dot_product_attention(is_causal=True)`` at the same shape in the same
process, forward only; medians of ``--repeats`` calls after one warm-up, of wall time
(``time.perf_counter``) and of CPU time (``time.process_time``)::

    python scripts/bench_recurrent.py                 # B=1, H=8, N=8192, D=Dv=64, float32
    python scripts/bench_recurrent.py --threads 1 --seq-len 4096
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from variants.engines.decay import decay_attention, decay_key_sum
from variants.engines.delta import delta_rule


def median_seconds(fn: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Median wall time and median CPU time (this process, all threads) of ``fn()`` over
    ``repeats`` calls after one warm-up call. On a shared machine CPU time is the steadier: it
    does not count the time other processes hold the cores."""
    fn()
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return statistics.median(wall), statistics.median(cpu)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=8192)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--chunks", type=int, nargs="+", default=[32, 64, 128])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    shape = (args.batch, args.heads, args.seq_len, args.head_dim)
    q = torch.randn(shape, generator=gen) * args.head_dim**-0.5
    k = F.normalize(torch.randn(shape, generator=gen), dim=-1)
    v = torch.randn(shape, generator=gen)
    beta = torch.rand(shape[:-1], generator=gen)
    log_alpha = F.logsigmoid(torch.randn(shape[:-1], generator=gen) + 4)
    log_gamma = torch.log1p(-(2.0 ** -torch.arange(5, 5 + args.heads, dtype=torch.float32)))
    print(f"torch {torch.__version__}, threads {args.threads}, shape {shape} float32, "
          f"load average {os.getloadavg()}")  # fmt: skip
    with torch.no_grad():
        sdpa, sdpa_cpu = median_seconds(
            lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True), args.repeats
        )
        print(f"{'':<28} {'wall':>9}    {'CPU time':>9}    speed-up over sdpa (wall, CPU)")
        print(f"{'causal sdpa':<28} {sdpa * 1e3:6.1f} ms    {sdpa_cpu * 1e3:6.1f} ms")
        engines = {
            "decay_attention": lambda c: decay_attention(q, k, v, log_gamma, c),
            "decay_key_sum": lambda c: decay_key_sum(k, log_gamma, c),
            "delta_rule": lambda c: delta_rule(q, k, v, beta, c),
            "delta_rule gated": lambda c: delta_rule(q, k, v, beta, c, log_alpha),
        }
        for name, engine in engines.items():
            for chunk in args.chunks:
                wall, cpu = median_seconds(lambda: engine(chunk), args.repeats)  # noqa: B023
                label = f"{name} c={chunk}"
                print(f"{label:<28} {wall * 1e3:6.1f} ms    {cpu * 1e3:6.1f} ms    "
                      f"{sdpa / wall:5.1f}x {sdpa_cpu / cpu:5.1f}x")  # fmt: skip
    print(f"load average {os.getloadavg()}")


if __name__ == "__main__":
    main()
