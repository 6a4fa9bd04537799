"""Linear attention with a fixed decay per head: RetNet's retention without its normalisation.

Retention (Sun et al. 2023, "Retentive Network: A Successor to Transformer for Large Language
Models") keeps one state per head, ``S_n = gamma S_{n-1} + k_n^T v_n``, and reads it after the
write, ``o_n = q_n S_n``. It is computed chunk by chunk (the paper's chunkwise form): within a
chunk the masked quadratic form ``(Q K^T * M) V`` with ``M_ij = gamma^(i - j)`` for ``j <= i``,
for a block of chunks in one batched product; across chunks a short loop carries the state.
Powers of ``gamma`` are exponentials of ``log gamma`` times a lag (at most the chunk size), so
strong decays underflow to zero and nothing divides by them. The plain reference is
:mod:`variants.engines.decay_naive`.
"""

from __future__ import annotations

import torch
from torch import Tensor

#: Tokens per chunk the callers take by default (``scripts/bench_recurrent.py``: fastest on CPU
#: at D = 64, and the intra-chunk products stay small next to the state's).
DEFAULT_CHUNK_SIZE = 64
#: Elements of one block's largest intermediates (``(c, c)`` and ``(D, Dv)`` per chunk, batch and
#: head; 1 MB in float32) on CPU, where blocks of chunks that stay in cache run 20-30% faster
#: than all chunks at once. Other devices batch every chunk.
CPU_BLOCK_ELEMENTS = 1 << 18


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the engines compute in: the input's, float32 for half precision (decay factors
    and states need the range and precision, and CPUs have no half triangular solve)."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def chunks_per_block(q: Tensor, v: Tensor, chunk_size: int) -> int:
    """How many chunks one batched block holds: on CPU those whose intermediates have about
    :data:`CPU_BLOCK_ELEMENTS` elements; elsewhere all of them."""
    if q.device.type != "cpu":
        return q.shape[-2]
    b, h, _, d = q.shape
    return cpu_chunks_per_block(b, h, chunk_size, d, v.shape[-1])


def cpu_chunks_per_block(batch: int, heads: int, chunk_size: int, d: int, dv: int) -> int:
    """:func:`chunks_per_block` on CPU, from the shape alone (the memory models use it)."""
    return max(1, CPU_BLOCK_ELEMENTS // (batch * heads * chunk_size * max(chunk_size, d, dv)))


def chunk_blocks(x: Tensor, chunk_size: int, chunks: int) -> list[Tensor]:
    """``(..., N, d)`` as blocks ``(..., nc, c, d)`` in order: the whole chunks of
    ``chunk_size`` tokens, ``chunks`` per block, then the ragged tail as one shorter chunk."""
    n = x.shape[-2]
    whole = n - n % chunk_size
    blocks = []
    if whole:
        chunked = x[..., :whole, :].unflatten(-2, (whole // chunk_size, chunk_size))
        blocks.extend(chunked.split(chunks, dim=-3))
    if whole < n:
        blocks.append(x[..., whole:, :].unsqueeze(-3))
    return blocks


def scan_states(carry: Tensor, step: Tensor, state: Tensor, matrix: bool) -> tuple[Tensor, Tensor]:
    """Runs ``S_c = carry_c S_{c-1} + step_c`` over the chunk dim (-3 of ``step``).

    Args:
        carry: Per chunk a factor ``(..., nc, 1, 1)`` broadcastable to ``(B, H, nc, 1, 1)``
            (``matrix=False``), or a matrix ``(B, H, nc, D, D)`` applied on the left.
        step: ``(B, H, nc, D, Dv)``.
        state: ``(B, H, D, Dv)``, the state before the first chunk.

    Returns:
        The state before each chunk ``(B, H, nc, D, Dv)``, and the state after the last.
    """
    nc = step.shape[-3]
    before = []
    for c in range(nc):
        before.append(state)
        if matrix:
            state = batched_addmm(step[..., c, :, :], carry[..., c, :, :], state)
        else:
            state = torch.addcmul(step[..., c, :, :], carry[..., c, :, :], state)
    return torch.stack(before, dim=-3), state


def batched_addmm(base: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """``base + a @ b`` in one fused kernel, over any leading dims (all three alike)."""
    out = torch.baddbmm(base.flatten(0, -3), a.flatten(0, -3), b.flatten(0, -3))
    return out.view(base.shape)


def join_outputs(outs: list[Tensor], v: Tensor) -> Tensor:
    """The blocks' outputs ``(B, H, n_i, Dv)`` as one ``(B, H, N, Dv)`` (no copy for one
    block; ``N = 0`` gives an empty tensor like ``v``)."""
    if len(outs) == 1:
        return outs[0]
    return torch.cat(outs, dim=-2) if outs else v.new_zeros(*v.shape[:2], 0, v.shape[-1])


def check_inputs(
    name: str, q: Tensor, k: Tensor, v: Tensor, chunk_size: int, state, extra: int = 0
) -> None:
    """Raises ``ValueError`` naming the argument when shapes or ``chunk_size`` disagree."""
    if q.dim() != 4 or k.shape != q.shape:
        raise ValueError(f"{name}: q and k must be (B, H, N, D) alike, got {tuple(q.shape)} "
                         f"and {tuple(k.shape)}")  # fmt: skip
    if v.dim() != 4 or v.shape[:-1] != q.shape[:-1]:
        raise ValueError(f"{name}: v must be (B, H, N, Dv) with q's (B, H, N), got "
                         f"{tuple(v.shape)} for q {tuple(q.shape)}")  # fmt: skip
    if chunk_size < 1:
        raise ValueError(f"{name}: chunk_size must be >= 1, got {chunk_size}")
    want = (*q.shape[:2], q.shape[-1], v.shape[-1] + extra)
    if state is not None and tuple(state.shape) != want:
        raise ValueError(f"{name}: state must be (B, H, D, Dv) = {want}, got "
                         f"{tuple(state.shape)}")  # fmt: skip


def _decay_blocks(
    q: Tensor, k: Tensor, v: Tensor, log_gamma: Tensor, state: Tensor, row_sums: bool = False
) -> tuple[Tensor, Tensor]:
    """Retention over blocks ``(B, H, nc, c, .)`` from ``state``: ``(B, H, nc * c, Dv)`` and the
    state after the last chunk (``row_sums``: one more column each, below)."""
    c = q.shape[-2]
    pos = torch.arange(c, device=q.device, dtype=q.dtype)
    lag = pos[:, None] - pos[None, :]  # (c, c): i - j
    log_g = log_gamma[:, None, None]  # (H, 1, 1)
    # masked before exp: gamma^(i - j) above the diagonal would overflow (and poison gradients)
    mask = (lag * log_g).masked_fill(lag < 0, float("-inf")).exp()  # (H, c, c)
    read = (log_g * (pos + 1)[:, None]).exp()  # (H, c, 1): gamma^(i + 1)
    write = (log_g * (c - 1 - pos)[:, None]).exp()  # (H, c, 1): gamma^(c - 1 - j)
    carry = (log_g * c).exp()[:, None].expand(-1, q.shape[-3], 1, 1)  # (H, nc, 1, 1): gamma^c
    scores = (q @ k.transpose(-2, -1)) * mask[:, None]  # (B, H, nc, c, c)
    k_write = k * write[:, None]
    step = k_write.transpose(-2, -1) @ v  # (B, H, nc, D, Dv)
    intra = scores @ v  # (B, H, nc, c, Dv)
    if row_sums:  # the decayed key sum as one more state column, the score rows' sums as output
        step = torch.cat([step, k_write.sum(dim=-2).unsqueeze(-1)], dim=-1)
        intra = torch.cat([intra, scores.sum(dim=-1, keepdim=True)], dim=-1)
    before, state = scan_states(carry, step, state, matrix=False)
    out = batched_addmm(intra, q * read[:, None], before)  # (B, H, nc, c, Dv [+ 1])
    return out.flatten(-3, -2), state


def decay_attention(
    q: Tensor, k: Tensor, v: Tensor, log_gamma: Tensor, chunk_size: int,
    state: Tensor | None = None, offset: int = 0, row_sums: bool = False,
) -> tuple[Tensor, Tensor]:  # fmt: skip
    """Causal linear attention with decay ``gamma`` per head, chunk by chunk.

    ``o_n = q_n S_n`` with ``S_n = gamma S_{n-1} + k_n^T v_n`` and ``S_{-1} = state``, ``n``
    counted from the start of this call.

    Args:
        q: ``(B, H, N, D)`` queries.
        k: ``(B, H, N, D)`` keys.
        v: ``(B, H, N, Dv)`` values.
        log_gamma: ``(H,)`` log decays, ``<= 0``.
        chunk_size: Tokens per chunk of the quadratic form (:data:`DEFAULT_CHUNK_SIZE`).
        state: ``(B, H, D, Dv)`` state before the first token (key dim first); zeros if None.
        offset: Absolute position of the first token; accepted and ignored, since the output
            depends only on the state and the tokens of this call.
        row_sums: Also carry the decayed key sum ``z_n = gamma z_{n-1} + k_n`` as a last state
            column (``state`` is then ``(B, H, D, Dv + 1)``) and return ``q_n . z_n``, the sum of
            the decayed score row, as a last output column: what a ones column of the values
            gives, without widening the large products to ``Dv + 1`` columns.

    Returns:
        ``(B, H, N, Dv)`` outputs and the ``(B, H, D, Dv)`` state after the last token, in
        ``q``'s dtype (half precision computes in float32).
    """
    check_inputs("decay_attention", q, k, v, chunk_size, state, int(row_sums))
    if log_gamma.shape != (q.shape[1],):
        raise ValueError(f"decay_attention: log_gamma must be (H,) = ({q.shape[1]},), got "
                         f"{tuple(log_gamma.shape)}")  # fmt: skip
    dtype = compute_dtype(q.dtype)
    b, h, _, d = q.shape
    if state is None:
        state = q.new_zeros(b, h, d, v.shape[-1] + int(row_sums), dtype=dtype)
    state, log_gamma = state.to(dtype), log_gamma.to(dtype)
    outs = []
    chunks = chunks_per_block(q, v, chunk_size)
    blocks = (chunk_blocks(x.to(dtype), chunk_size, chunks) for x in (q, k, v))
    for qb, kb, vb in zip(*blocks):
        out, state = _decay_blocks(qb, kb, vb, log_gamma, state, row_sums)
        outs.append(out)
    return join_outputs(outs, v).to(q.dtype), state.to(q.dtype)


def decay_key_sum(
    k: Tensor, log_gamma: Tensor, chunk_size: int, state: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Decayed running key sums ``z_n = gamma z_{n-1} + k_n`` (``z_{-1} = state``, ``(B, H,
    D)``): every ``z_n`` ``(B, H, N, D)`` and the last ``(B, H, D)``.

    Retention with the keys as values under a unit query and key. A normaliser that needs only
    ``q_n . z_n`` gets it cheaper as one more value column of ones in :func:`decay_attention`
    (``variants.engines.prefix.with_ones_column``).
    """
    ones = k.new_ones(*k.shape[:-1], 1)  # (B, H, N, 1)
    initial = None if state is None else state.unsqueeze(-2)  # (B, H, 1, D)
    sums, last = decay_attention(ones, ones, k, log_gamma, chunk_size, initial)
    return sums, last.squeeze(-2)
