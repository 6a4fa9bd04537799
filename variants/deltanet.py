"""The delta rule (DeltaNet, Yang et al. 2024) and its gated form (Gated DeltaNet, 2025).

DeltaNet ("Parallelizing Linear Transformers with the Delta Rule over Sequence Length",
NeurIPS 2024, after Schlag et al. 2021) keeps a ``(D, Dv)`` state per head and, instead of
adding ``k_t v_t^T`` to it as linear attention does, corrects what the state returns for the key:
``S_t = S_{t-1} + beta_t k_t (v_t - S_{t-1}^T k_t)^T``, read as ``o_t = S_t^T q_t`` (the state
after writing token ``t``). Queries and keys are L2-normalised (so the write is a projection
and the state stays bounded), the query is scaled by ``1/sqrt(D)`` as in the paper's kernels
(``scale``), and the write strength ``beta_t = sigmoid(w_h . k_t + b_h)`` comes from a learned
vector and bias per head (the variant's own parameters, trained with a model or fitted by
attention transfer; ``w = 0``, ``b = 0`` at the start: ``beta = 1/2``). ``k_t`` there is the
key before normalisation, so ``beta`` can depend on its norm.

``gate="learned"`` is Gated DeltaNet ("Gated Delta Networks: Improving Mamba2 with Delta Rule",
ICLR 2025): ``S_t = alpha_t (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T`` with a decay
``alpha_t = sigmoid(u_h . k_t + a_h)`` from another learned vector and bias per head (``u = 0``
and ``a_h`` set so that ``alpha`` starts at RetNet's ``1 - 2^-(5+h)``). In the paper ``alpha``
and ``beta`` come from the layer's input; an attention operator sees only q, k and v, so here
they come from the key.

Not an approximation of softmax attention (``approximates_softmax = False``), and causal by
construction. Forms: the chunked WY form (:mod:`variants.engines.delta`) for whole sequences,
the same engine from a carried state for decoding (a ``(D, Dv)`` state per query head).
Grouped heads: ``beta`` differs per query head, so k and v are repeated to the query heads.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from variants.base import check_choice
from variants.engines.delta import delta_rule
from variants.engines.fla_backend import delta_rule_fla
from variants.grouped import group_size, repeat_kv
from variants.recurrent import RecurrentOperator
from variants.retention import block_chunks, chunk_sizes, log_decays, retnet_exponents

GATES = ("none", "learned")


class DeltaNetAttention(RecurrentOperator):
    """The delta rule with a learned write strength per head; optionally gated.

    Args:
        heads: Number of heads (one ``w_h``, ``b_h`` each); None builds them at the first
            call (or :meth:`build_parameters`) for that call's heads.
        gate: ``"none"`` (DeltaNet) or ``"learned"`` (Gated DeltaNet's decay, from the key).
        chunk_size: Tokens per chunk of the WY form (a speed parameter; results agree); None
            chooses it by measurement on this machine (:mod:`variants.tuning`; 64 with tuning off).
        backend: ``"torch"`` (the suite's chunked engine), ``"fla"`` (flash-linear-attention's
            ``chunk_delta_rule`` / ``chunk_gated_delta_rule`` kernels, CUDA) or ``"auto"`` (fla
            where it runs; rows record ``resolved_backend``).
        scale: Query scale after normalisation; None: ``1/sqrt(D)``.
        kv_len: Ignored (accepted for a uniform constructor).
        head_dim: Head dimension (with ``heads``, builds the parameters at once).
    """

    name: ClassVar[str] = "deltanet"
    causal_only_reason: ClassVar[str] = (
        "the delta rule is a recurrence over positions, causal by construction"
    )

    def __init__(
        self,
        heads: int | None = None,
        gate: str = "none",
        chunk_size: int | None = None,
        backend: str = "auto",
        scale: float | None = None,
        kv_len: int | None = None,
        head_dim: int | None = None,
    ) -> None:
        super().__init__(kv_len=kv_len, head_dim=head_dim, scale=scale)
        self._check_common(heads, chunk_size, backend)
        self.gate = check_choice(self.name, "gate", gate, GATES)
        names = ("beta_weight", "beta_bias")
        self.per_head_names = names + (("gate_weight", "gate_bias") if gate == "learned" else ())
        self._declare_per_head(heads, head_dim)

    def initial_parameters(self, heads: int, head_dim: int) -> dict[str, Tensor]:
        out = {"beta_weight": torch.zeros(heads, head_dim), "beta_bias": torch.zeros(heads)}
        if self.gate == "learned":
            gamma = torch.exp(log_decays(retnet_exponents(heads, None)))
            out["gate_weight"] = torch.zeros(heads, head_dim)
            out["gate_bias"] = torch.logit(gamma).float()  # sigmoid(bias) = gamma
        return out

    def write_strengths(self, k: Tensor) -> tuple[Tensor, Tensor | None]:
        """``beta (B, H, N)`` and ``log alpha`` (None without the gate) from the raw keys
        ``k (B, H, N, D)``."""
        params = self.per_head(k)
        beta = torch.sigmoid(torch.einsum("bhnd,hd->bhn", k, params[0]) + params[1][:, None])
        if self.gate != "learned":
            return beta, None
        logits = torch.einsum("bhnd,hd->bhn", k, params[2]) + params[3][:, None]
        return beta, F.logsigmoid(logits)

    def run(self, q, k, v, state, start, engine, chunk):
        group = group_size(q, k)
        k, v = repeat_kv(k, group), repeat_kv(v, group)  # beta differs per query head
        work = q.dtype if q.dtype in (torch.float32, torch.float64) else torch.float32
        qw, kw, vw = q.to(work), k.to(work), v.to(work)
        beta, log_alpha = self.write_strengths(kw)
        qn = F.normalize(qw, dim=-1) * self.softmax_scale(q.shape[-1])
        kn = F.normalize(kw, dim=-1)
        if engine == "fla":
            out, state = delta_rule_fla(qn, kn, vw, beta, log_alpha, state)
        else:
            out, state = delta_rule(qn, kn, vw, beta, chunk, log_alpha, state=state)
        return out.to(q.dtype), state

    # ---------------------------------------------------------------------------- cost models
    def working_elements(self, batch, heads, n, head_dim, saved) -> int:
        return delta_memory(batch, heads, n, head_dim, head_dim, self.chunk(), saved)

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
        gates = 2 if self.gate == "learned" else 1  # w . k (and u . k) per token
        per_head = delta_flops(q_len, head_dim, head_dim, self.chunk())
        return batch * heads * (per_head + gates * 2 * q_len * head_dim)

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
        # 2x the forward's products (both operands carry gradients; autograd skips the ones
        # that do not reach the output: the first chunk's zero state and the last chunk's
        # write, a boundary term of a few (D, D) products); each solve's backward is one solve
        # (as the forward's) and one (s, s) @ (s, s) product
        forward = self.flops(batch, heads, q_len, kv_len, head_dim, causal, kv_heads)
        solves = batch * heads * solve_flops(q_len, self.chunk())
        products = sum(c * 2 * s**3 for s, c in chunk_sizes(q_len, self.chunk()))
        return 2 * (forward - solves) + solves + batch * heads * products


def delta_flops(n: int, d: int, dv: int, chunk: int) -> int:
    """Forward FLOPs of the chunked WY form for one head (:mod:`variants.engines.delta`): per
    chunk of ``s`` tokens ``Q K^T`` and ``K K^T`` (``4 s^2 d``), the unit-triangular solve for
    ``T`` (``s^2 (s - 1)``: forward substitution against the identity), ``W = T K`` and
    ``U = T V`` (``2 s^2 (d + dv)``), the transition ``K^T W`` (``2 s d^2``), the write
    ``K^T U``, the correction ``W S`` and the queries' read ``Q S`` (``6 s d dv``), the
    intra-chunk product with the corrected values (``2 s^2 dv``) and the state carried across
    the chunk (``2 d^2 dv``)."""
    total = 0
    for s, count in chunk_sizes(n, chunk):
        per_chunk = s * s * (6 * d + 4 * dv) + s * s * (s - 1) + 2 * s * d * d
        total += count * (per_chunk + 6 * s * d * dv + 2 * d * d * dv)
    return total


def solve_flops(n: int, chunk: int) -> int:
    """The triangular solves' share of :func:`delta_flops`; its backward is one more solve and
    an ``(s, s) @ (s, s)`` product per chunk."""
    return sum(count * s * s * (s - 1) for s, count in chunk_sizes(n, chunk))


def delta_memory(
    batch: int, heads: int, n: int, d: int, dv: int, chunk: int, saved: bool = False
) -> int:
    """Elements of the chunked form's working set (upper bound): per head the normalised q
    and k, the write strengths and gates, the blocks' outputs and their concatenation; and one
    block's scores, gates, triangular factor, WY factors, corrected values, transitions and
    states (``saved``: every block's, as autograd keeps them for the backward)."""
    c = min(chunk, n)
    per_chunk = 6 * c * c + 5 * c * d + 5 * c * dv + d * d + 2 * d * dv
    chunks = -(-n // c) if saved else block_chunks(batch, heads, n, c, d, dv)
    block = chunks * per_chunk
    return batch * heads * (n * (3 * d + 3 * dv + 2) + block)
