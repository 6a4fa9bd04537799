"""Longformer's fused CPU forward at each forward blocking, against ``sdpa`` in the same rounds.

    python scripts/longformer_blocks.py [--seq-len 8192] [--heads 8] [--window 256] [--rounds 5]

Forward under ``no_grad``, fp32, batch 1, head_dim 64; per blocking the median time over the
rounds and the speed-up over ``sdpa`` (bidirectional, then causal). Run it on an idle machine:
it is the measurement behind docs/performance.md, "The work ratio".
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

import variants

BLOCKS = (16, 32, 64, 128, 256)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq-len", type=int, default=8192)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--window", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    n, d = args.seq_len, 64
    q, k, v = (torch.randn(1, args.heads, n, d) for _ in range(3))
    for causal in (False, True):
        calls = {"sdpa": lambda c=causal: F.scaled_dot_product_attention(q, k, v, is_causal=c)}
        for block in BLOCKS:
            module = variants.create(
                "longformer", window=args.window, kv_len=n, head_dim=d,
                forward_block_size=block, backend="chunked",
            )  # fmt: skip
            calls[f"forward_block_size={block}"] = lambda m=module, c=causal: m(q, k, v, causal=c)
        times: dict[str, list[float]] = {name: [] for name in calls}
        with torch.no_grad():
            for fn in calls.values():  # warm-up: masks, allocator
                fn()
            for _ in range(args.rounds):
                for name, fn in calls.items():
                    start = time.perf_counter()
                    fn()
                    times[name].append(time.perf_counter() - start)
        base = statistics.median(times["sdpa"])
        for name, ts in times.items():
            t = statistics.median(ts)
            mask = "causal" if causal else "bidirectional"
            print(f"{mask:13s} {name:24s} {t * 1e3:8.1f} ms {base / t:6.2f}x")


if __name__ == "__main__":
    main()
