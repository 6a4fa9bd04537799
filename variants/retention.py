"""Retention (RetNet, Sun et al. 2023): linear attention with a fixed decay per head.

"Retentive Network: A Successor to Transformer for Large Language Models" (arXiv:2307.08621)
computes ``o_n = sum_{m <= n} gamma_h^(n-m) (q_n . k_m) v_m``: a causal linear attention whose
state ``S_n = gamma_h S_{n-1} + k_n v_n^T`` forgets at a fixed rate per head, with RetNet's
decays ``gamma_h = 1 - 2^(-5-h)`` for head ``h = 0 .. H-1`` by default. It is not an
approximation of softmax attention but an operator of its own (``approximates_softmax =
False``); it is causal by construction (bidirectional and cross points are refused).

Normalisations (``normalize=True``, the default, those of the paper's parallel form, section
2.2 "Retention score normalization"): the scores are scaled by ``1/sqrt(D)``
(``scale``); each decay row is divided by ``sqrt(sum_{m <= n} gamma^(n-m))``; and each row of
scores by ``max(|sum_m R_nm|, 1)``. Both are computed in the recurrent form too (the second from
a running key sum carried as one more column of the state), so the parallel, chunked and
recurrent forms agree exactly. The paper's GroupNorm after retention is a layer with its own
affine parameters, outside the attention operator, and is not applied (the models that run
variants have their own normalisation). ``normalize=False`` gives the plain formula above.

Forms: the chunked form (:mod:`variants.engines.decay`) for whole sequences, ``O(n * chunk *
d + n * d * Dv)``; the recurrent form for decoding (a ``(D, Dv + 1)`` state per query head:
constant in the context). Grouped heads: the decays differ per head, so k and v are repeated
to the query heads (one state per query head). The decay is fixed unless ``learn_decay``: then
``log(-log gamma_h)`` is a trainable parameter per head (what attention transfer fits).
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import Tensor

from variants.base import VariantConfigError
from variants.engines.decay import cpu_chunks_per_block, decay_attention
from variants.engines.fla_backend import decay_attention_fla
from variants.grouped import group_size, repeat_kv
from variants.recurrent import RecurrentOperator

#: RetNet's decay exponents: ``gamma_h = 1 - 2^-(5 + h)``.
RETNET_FIRST_EXPONENT = 5.0


def retnet_exponents(heads: int, decay_range: tuple[float, float] | None) -> Tensor:
    """Decay exponents ``e_h`` (``gamma_h = 1 - 2^-e_h``): RetNet's ``5, 6, ...`` or
    ``heads`` values spaced evenly over ``decay_range``."""
    if decay_range is None:
        return RETNET_FIRST_EXPONENT + torch.arange(heads, dtype=torch.float64)
    lo, hi = decay_range
    return torch.linspace(lo, hi, heads, dtype=torch.float64)


def log_decays(exponents: Tensor) -> Tensor:
    """``log gamma = log(1 - 2^-e)``, computed without cancellation."""
    return torch.log1p(-torch.exp2(-exponents))


def row_scales(log_gamma: Tensor, start: int, n: int) -> Tensor:
    """``1 / sqrt(sum_{m <= p} gamma^(p-m))`` for absolute positions ``p = start .. start+n-1``,
    ``(H, n, 1)``: ``sqrt((1 - gamma) / (1 - gamma^(p+1)))``."""
    pos = torch.arange(start + 1, start + n + 1, device=log_gamma.device, dtype=log_gamma.dtype)
    lg = log_gamma.unsqueeze(-1)  # (H, 1)
    return torch.sqrt(torch.expm1(lg) / torch.expm1(lg * pos)).unsqueeze(-1)  # (H, n, 1)


class RetentionAttention(RecurrentOperator):
    """Retention with a decay per head; chunked for sequences, recurrent for decoding.

    Args:
        heads: Number of heads; needed only with ``learn_decay`` (the parameter is built at the
            first call otherwise).
        decay_range: ``[e_first, e_last]``: exponents of the heads' decays ``1 - 2^-e`` spaced
            evenly from the first head to the last (larger: slower forgetting, longer memory);
            None (default): RetNet's ``e_h = 5 + h``.
        normalize: Apply the paper's score normalisations (module docstring); False: the plain
            decayed sum.
        learn_decay: Make ``log(-log gamma_h)`` a trainable parameter per head.
        chunk_size: Tokens per chunk of the chunked form (a speed parameter; results agree); None
            chooses it by measurement on this machine (:mod:`variants.tuning`; 64 with tuning off).
        backend: ``"torch"`` (the suite's chunked engine), ``"fla"`` (flash-linear-attention's
            ``chunk_simple_gla`` kernel, CUDA) or ``"auto"`` (fla where it runs; rows record
            ``resolved_backend``).
        scale: Score scale; None: ``1/sqrt(D)``.
        kv_len: Ignored (accepted for a uniform constructor).
        head_dim: Head dimension (with ``heads``, builds the learnable decay at once).
    """

    name: ClassVar[str] = "retention"
    causal_only_reason: ClassVar[str] = (
        "retention is a recurrence over positions, causal by construction"
    )

    def __init__(
        self,
        heads: int | None = None,
        decay_range: list[float] | tuple[float, float] | None = None,
        normalize: bool = True,
        learn_decay: bool = False,
        chunk_size: int | None = None,
        backend: str = "auto",
        scale: float | None = None,
        kv_len: int | None = None,
        head_dim: int | None = None,
    ) -> None:
        super().__init__(kv_len=kv_len, head_dim=head_dim, scale=scale)
        self._check_common(heads, chunk_size, backend)
        self.decay_range = _check_range(decay_range)
        for field, value in (("normalize", normalize), ("learn_decay", learn_decay)):
            if not isinstance(value, bool):
                raise VariantConfigError(f"retention: {field}={value!r} must be true or false")
        self.normalize, self.learn_decay = normalize, learn_decay
        self.per_head_names = ("decay",) if learn_decay else ()
        self._declare_per_head(heads, head_dim)

    def initial_parameters(self, heads: int, head_dim: int) -> dict[str, Tensor]:
        if not self.learn_decay:
            return {}
        log_gamma = log_decays(retnet_exponents(heads, self.decay_range))
        return {"decay": torch.log(-log_gamma).float()}  # log(-log gamma): any real is valid

    def log_gamma(self, x: Tensor) -> Tensor:
        """``(H,)`` log decays for ``x (B, H, N, D)``, in its dtype (float32 where it is
        half precision: the powers of gamma are taken in log space either way)."""
        dtype = x.dtype if x.dtype == torch.float64 else torch.float32
        if self.learn_decay:
            (decay,) = self.per_head(x)
            return -torch.exp(decay.to(dtype))
        return log_decays(retnet_exponents(x.shape[1], self.decay_range)).to(x.device, dtype)

    def state_columns(self, head_dim: int) -> int:
        return head_dim + (1 if self.normalize else 0)  # the normaliser's key sum

    def run(self, q, k, v, state, start, engine, chunk):
        group = group_size(q, k)
        k, v = repeat_kv(k, group), repeat_kv(v, group)  # decays differ per query head
        log_gamma = self.log_gamma(q)
        work = log_gamma.dtype
        qw, kw, vw = q.to(work), k.to(work), v.to(work)
        # the state carries sum_m gamma^(n-m) k_m as a last column (the normaliser's row sums
        # q_n . z_n come out as a last output column): a ones column of the values on fla, an
        # engine option on the CPU, where widening the large products to Dv + 1 costs 25%
        if engine == "fla":
            ones = [vw.new_ones(*vw.shape[:-1], 1)] if self.normalize else []
            out, state = decay_attention_fla(qw, kw, torch.cat([vw, *ones], -1), log_gamma, state)
        else:
            out, state = decay_attention(
                qw, kw, vw, log_gamma, chunk, state=state, row_sums=self.normalize
            )
        # the outputs are linear in the score scale: it multiplies the result, not q
        scale = self.softmax_scale(q.shape[-1])
        if not self.normalize:
            return (out * scale).to(q.dtype), state
        rows = row_scales(log_gamma, start, q.shape[-2]) * scale  # (H, N, 1)
        sums = (out[..., -1:] * rows).abs().clamp_min(1.0)  # max(|row sum|, 1)
        return (out[..., :-1] * (rows / sums)).to(q.dtype), state

    # ---------------------------------------------------------------------------- cost models
    def working_elements(self, batch, heads, n, head_dim, saved) -> int:
        dv = self.state_columns(head_dim)
        return decay_memory(batch, heads, n, head_dim, dv, self.chunk(), self.normalize, saved)

    def flops(
        self,
        batch: int,
        heads: int,
        q_len: int,
        kv_len: int,
        head_dim: int,
        causal: bool,
        kv_heads: int | None = None,
    ) -> int:
        flops = decay_flops(q_len, head_dim, head_dim, self.chunk(), self.normalize)
        return batch * heads * flops

    def backward_flops(
        self,
        batch: int,
        heads: int,
        q_len: int,
        kv_len: int,
        head_dim: int,
        causal: bool,
        kv_heads: int | None = None,
    ) -> int:
        # 2x the forward: both operands of every product carry gradients (autograd skips the
        # products that do not reach the output: the first chunk's zero state, the last
        # chunk's write; a boundary term of one chunk, exact from two blocks of chunks on)
        return 2 * self.flops(batch, heads, q_len, kv_len, head_dim, causal, kv_heads)


def chunk_sizes(n: int, chunk: int) -> list[tuple[int, int]]:
    """``(size, count)`` of the chunks the engines cut ``n`` tokens into: whole chunks of
    ``chunk`` tokens, then the ragged tail as one shorter chunk."""
    whole, tail = divmod(n, chunk)
    return [(s, c) for s, c in ((chunk, whole), (tail, 1 if tail else 0)) if c]


def decay_flops(n: int, d: int, dv: int, chunk: int, row_sums: bool = False) -> int:
    """Forward matmul FLOPs of the chunked decayed sum for one head
    (:mod:`variants.engines.decay`): per chunk of ``s`` tokens the scores ``Q K^T`` and their
    product with V (``2 s^2 (d + dv)``), the decayed keys' write to the state (``2 s d dv``) and
    the queries' read of the previous state (``2 s d (dv + 1)`` with ``row_sums``: the key sum's
    column; the sums themselves are reductions, not products)."""
    read = dv + int(row_sums)
    return sum(
        c * (2 * s * s * (d + dv) + 2 * s * d * dv + 2 * s * d * read)
        for s, c in chunk_sizes(n, chunk)
    )


def block_chunks(batch: int, heads: int, n: int, chunk: int, d: int, dv: int) -> int:
    """Chunks in one batched block of the engines on CPU (at most all of them)."""
    return min(-(-n // chunk), cpu_chunks_per_block(batch, heads, chunk, d, dv))


def decay_memory(
    batch: int, heads: int, n: int, d: int, dv: int, chunk: int, normalize=True, saved=False
) -> int:
    """Elements of the chunked form's working set (upper bound): per head the scaled
    queries, the blocks' outputs and their concatenation (with ``normalize``: the row sums'
    column, the scaled and the normalised output too); and one block's scores, decayed
    queries and keys, products and states (``saved``: every block's, as autograd keeps them
    for the backward)."""
    c = min(chunk, n)
    chunks = -(-n // c) if saved else block_chunks(batch, heads, n, c, d, dv)
    block = chunks * (c * c + 2 * c * d + 3 * c * dv + 2 * d * dv)
    return batch * heads * (n * (d + (4 if normalize else 2) * dv) + block)


def _check_range(value) -> tuple[float, float] | None:
    if value is None:
        return None
    try:
        lo, hi = (float(x) for x in value)
    except (TypeError, ValueError):
        lo = hi = math.nan
    if not (0 < lo <= hi < 60):
        raise VariantConfigError(
            f"retention: decay_range={value!r} must be [first, last] exponents with "
            "0 < first <= last < 60 (gamma = 1 - 2^-e)"
        )
    return (lo, hi)
