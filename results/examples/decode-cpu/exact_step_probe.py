"""Is the exact KV-cache step a fast baseline? (docs/results.md, "Decoding")

At 32768 cached tokens, 8 heads, head_dim 64, fp32, one query token: the time of SDPA's step,
of the same attention as two plain matmuls, of each of its passes alone, and of a read of the
cache with nothing else (a sum), each as the bytes of the cache over the time; then the copy
bandwidth the decode rows compare with. Usage: python exact_step_probe.py THREADS
"""

import os
import sys

import torch
import torch.nn.functional as F

from harness.measure import env
from harness.measure.timing import time_callable


def probe(kv_heads: int, n: int = 32768, h: int = 8, d: int = 64) -> None:
    """Print the times and bandwidths of one KV-head count."""
    g = h // kv_heads
    k, v = torch.randn(1, kv_heads, n, d), torch.randn(1, kv_heads, n, d)
    q = torch.randn(1, kv_heads, g, d)  # a group's queries as rows of its KV head
    cache, half = 2 * k.numel() * 4, k.numel() * 4
    s = torch.matmul(k, q.transpose(-1, -2)) * d**-0.5  # (1, Hkv, n, G)
    p = torch.softmax(s, dim=-2)

    def two_matmuls():
        scores = torch.matmul(k, q.transpose(-1, -2)) * d**-0.5
        return torch.matmul(torch.softmax(scores, dim=-2).transpose(-1, -2), v)

    assert torch.allclose(two_matmuls(), F.scaled_dot_product_attention(q, k, v), atol=1e-5)
    for name, fn, size in (
        ("sdpa step", lambda: F.scaled_dot_product_attention(q, k, v), cache),
        ("two matmuls", two_matmuls, cache),
        ("  scores K q^T", lambda: torch.matmul(k, q.transpose(-1, -2)), half),
        ("  softmax", lambda: torch.softmax(s, dim=-2), s.numel() * 8),
        ("  p^T V", lambda: torch.matmul(p.transpose(-1, -2), v), half),
        ("read only (sum)", lambda: k.sum() + v.sum(), cache),
    ):
        ms = time_callable(fn, "cpu", min_run_time=0.5)["time_ms"]
        print(f"kv_heads={kv_heads} {name:16s} {ms:8.3f} ms {size / ms / 1e6:7.2f} GB/s")
    copy = env.copy_bandwidth_gbs("cpu")
    print(f"kv_heads={kv_heads} copy bandwidth (read + write) {copy:.2f} GB/s")


if __name__ == "__main__":
    threads = int(sys.argv[1]) if len(sys.argv) > 1 else 1
    torch.set_num_threads(threads)
    print("load average", os.getloadavg(), "threads", threads)
    for kv_heads in (8, 2):
        probe(kv_heads)
