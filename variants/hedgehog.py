"""Hedgehog attention (Zhang et al. 2024): linear attention with a learnable softmax feature map.

"The Hedgehog & the Porcupine: Expressive Linear Attentions with Softmax Mimicry" (ICLR 2024)
replaces ``exp(q . k)`` by ``phi(q) . phi(k)`` with a trainable feature map per head,
``phi(x) = [softmax(W x + b), softmax(-(W x + b))]`` (``2 * D`` features for a ``D x D``
matrix ``W`` and a bias ``b``: the paper's linear layer),
fitted so that the linear attention mimics a pretrained model's softmax attention ("attention
transfer", :mod:`harness.tasks.transfer`). Both halves are positive, so the normalised
attention is a weighted mean of the values. Bidirectional attention costs ``O(n * D^2)``; causal
attention streams chunked prefix sums (:mod:`variants.engines.prefix`), bottom-right aligned.

``W`` starts as the identity and ``b`` as zero (the paper's initialisation): an untrained
Hedgehog is the fixed kernel ``softmax(q) . softmax(k) + softmax(-q) . softmax(-k)``, a poor
approximation until fitted. The feature map has no temperature, so there is no ``scale``
parameter (the fit absorbs it into ``W``). :meth:`HedgehogAttention.attention_weights` returns
the ``(Nq, Nk)`` weights the variant applies to V, which the transfer step's attention loss
(the paper's cross-entropy) compares with softmax's.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor

from variants.base import AttentionVariant, causal_mask, check_positive_int, check_qkv
from variants.engines.prefix import FeatureMaps, kernel_attention
from variants.engines.prefix_costs import StreamedKernelAttention
from variants.engines.prefix_decode import RecurrentDecode
from variants.grouped import repeat_bytes
from variants.tuning import check_auto


def softmax_feature_map(x: Tensor, w: Tensor, b: Tensor | None = None) -> Tensor:
    """``[softmax(W x + b), softmax(-(W x + b))]`` of ``x (..., H, N, D)`` with ``w (H, D, D)``
    and ``b (H, D)`` (none: zero): ``2 D`` features."""
    proj = x @ w.transpose(-2, -1)  # (..., H, N, D): W x for every token, per head
    if b is not None:
        proj = proj + b.unsqueeze(-2)  # the bias of each head, for every token
    return torch.cat([proj.softmax(dim=-1), (-proj).softmax(dim=-1)], dim=-1)


#: The causal prefix sums apply the map group by group (:mod:`variants.engines.prefix`).
SOFTMAX_MAPS = FeatureMaps(query=softmax_feature_map, key=softmax_feature_map)


class HedgehogAttention(RecurrentDecode, StreamedKernelAttention, AttentionVariant):
    """Linear attention with the learnable map ``[softmax(W x + b), softmax(-(W x + b))]``.

    ``W`` is one ``(D, D)`` matrix per head, an ``(H, D, D)`` ``nn.Parameter``, and ``b`` one
    ``(D,)`` bias per head, an ``(H, D)`` ``nn.Parameter`` (``bias``). The number of
    heads is not part of the variant interface: given with ``head_dim``, ``W`` is built here;
    left ``None``, ``W`` is built (identity) at the first forward for that call's heads and head
    dimension, and later calls must match them (``not_supported_reasons`` says so otherwise). A
    fitting step must therefore run one forward before collecting the parameters; loading a
    saved ``state_dict`` into an unbuilt instance builds ``W`` from the saved shape. ``trained``
    is False until a fitting step sets it.

    Args:
        heads: Number of heads (one ``W`` each); ``None`` builds ``W`` at the first forward.
        chunk_size: Tokens per chunk of the causal prefix sum; None (default) chooses it by
            measurement on this machine (:mod:`variants.tuning`; 32 with tuning off).
        kv_len: Ignored (accepted for a uniform constructor).
        head_dim: Head dimension ``D`` (``W`` is ``D x D``); ``None``: taken at the first call.
        group_elements: Query elements per streamed group of chunks; None: tuned likewise.
    """

    name: ClassVar[str] = "hedgehog"
    exact: ClassVar[bool] = False
    supports_causal: ClassVar[bool] = True
    supports_cross: ClassVar[bool] = True
    randomized: ClassVar[bool] = False
    knob: ClassVar[str | None] = None
    #: one feature map per query head: grouped k, v are repeated, the decode state is per head
    shared_key_map: ClassVar[bool] = False
    default_chunk: ClassVar[int] = 32

    def __init__(
        self,
        heads: int | None = None,
        chunk_size: int | None = None,
        kv_len: int | None = None,
        head_dim: int | None = None,
        group_elements: int | None = None,
    ) -> None:
        super().__init__(kv_len=kv_len, head_dim=head_dim)
        self.heads = None if heads is None else check_positive_int(self.name, "heads", heads)
        self.chunk_size = check_auto(self.name, "chunk_size", chunk_size)
        self.group_elements = check_auto(self.name, "group_elements", group_elements)
        self.register_parameter("weight", None)
        self.register_parameter("bias", None)
        if heads is not None and head_dim is not None:
            self._build(heads, head_dim, torch.device("cpu"))

    # ------------------------------------------------------------------------ the feature map
    def _build(self, heads: int, head_dim: int, device: torch.device) -> None:
        """``W`` as ``heads`` identities of size ``head_dim`` and ``b`` as zeros (float32,
        trainable)."""
        eye = torch.eye(head_dim, device=device).expand(heads, head_dim, head_dim)
        self.weight = torch.nn.Parameter(eye.clone())  # (H, D, D)
        self.bias = torch.nn.Parameter(torch.zeros(heads, head_dim, device=device))  # (H, D)
        self.heads, self.head_dim = heads, head_dim

    def build_parameters(self, heads: int, head_dim: int) -> None:
        if self.weight is None:
            self._build(heads, head_dim, torch.device("cpu"))
        problem = self._mismatch(heads, head_dim)
        if problem:
            raise ValueError(problem)

    def _mismatch(self, heads: int, head_dim: int) -> str | None:
        if self.weight is None:
            return None
        built = tuple(self.weight.shape[:2])
        if built != (heads, head_dim):
            return (
                f"hedgehog: feature maps built for heads={built[0]}, head_dim={built[1]}; "
                f"got heads={heads}, head_dim={head_dim}"
            )
        return None

    def features(self, x: Tensor) -> Tensor:
        """``phi(x) = [softmax(W x + b), softmax(-(W x + b))]`` of ``x (B, H, N, D)`` ->
        ``(B, H, N, 2D)``.

        Builds ``W`` (identity) and ``b`` (zero) on the first call when the constructor could
        not.
        """
        return softmax_feature_map(x, *self._weight_for(x))

    def _weight_for(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``W (H, D, D)`` and ``b (H, D)`` in x's dtype and device; built on the first call."""
        heads, head_dim = x.shape[1], x.shape[-1]
        if self.weight is None:
            self._build(heads, head_dim, x.device)
        problem = self._mismatch(heads, head_dim)
        if problem:
            raise ValueError(problem)
        to = {"device": x.device, "dtype": x.dtype}
        return self.weight.to(**to), self.bias.to(**to)

    # ------------------------------------------------------------------------------ attention
    def forward(self, q: Tensor, k: Tensor, v: Tensor, causal: bool = False) -> Tensor:
        check_qkv(q, k, v)
        if causal:  # the features are made group by group inside the prefix sums
            w, b = self._weight_for(q)
            return self.causal_prefix(q, k, v, SOFTMAX_MAPS, (w, b))
        # (B, H, Nq, 2D), (B, H, Nk, 2D) features: positive, so the denominator is too
        return kernel_attention(self.features(q), self.features(k), v)  # (B, H, Nq, Dv)

    def attention_weights(self, q: Tensor, k: Tensor, causal: bool = False) -> Tensor:
        """The ``(B, H, Nq, Nk)`` weights the variant applies to V (rows sum to 1).

        ``phi(q_i) . phi(k_j)`` normalised over the keys query ``i`` may see (bottom-right
        causal alignment). Quadratic in length: for fitting and inspection, not for speed.
        """
        scores = self.features(q) @ self.features(k).transpose(-2, -1)  # (B, H, Nq, Nk)
        if causal:
            scores = scores.masked_fill(~causal_mask(q.shape[-2], k.shape[-2], q.device), 0.0)
        return scores / scores.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(q.dtype).tiny)

    def not_supported_reasons(self, q: Tensor, k: Tensor, v: Tensor, causal: bool) -> list[str]:
        reasons = super().not_supported_reasons(q, k, v, causal)
        problem = self._mismatch(q.shape[1], q.shape[-1])
        if problem:
            reasons.append(problem)
        return reasons

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        """Build ``W`` from a saved fit's shape first, so an unbuilt instance can load it."""
        saved = state_dict.get(prefix + "weight")
        if self.weight is None and saved is not None:
            self._build(saved.shape[0], saved.shape[-1], saved.device)
        super()._load_from_state_dict(state_dict, prefix, *args)

    # ------------------------------------------------------------------------- decode form
    def decode_maps(self, q: Tensor) -> tuple[FeatureMaps, tuple[Tensor, ...]]:
        return SOFTMAX_MAPS, tuple(self._weight_for(q))

    def state_heads(self, kv_heads: int) -> int:
        return self.heads or kv_heads  # one state per query head (its own key map)

    def feature_parameters(self, heads: int, head_dim: int) -> int:
        return heads * head_dim * (head_dim + 1)

    # ---------------------------------------------------------------------------- cost models
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
        # W x for queries and keys, and the attention; the softmaxes and the division are
        # elementwise work, not counted (as everywhere in the suite)
        feats = 2 * (q_len + kv_len) * head_dim * head_dim
        return batch * heads * (feats + self.attention_flops(q_len, kv_len, head_dim, causal))

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
        # W x takes both gradients (x and the trainable W: 2x); the causal backward computes it
        # again (1x); the attention's matmuls take both gradients
        feats = (3 if causal else 2) * 2 * (q_len + kv_len) * head_dim * head_dim
        attend = self.attention_flops(q_len, kv_len, head_dim, causal, backward=True)
        return batch * heads * (feats + attend)

    def feature_count(self, head_dim: int) -> int:
        return 2 * head_dim

    def analytic_mem_bytes(
        self, batch, heads, q_len, kv_len, head_dim, causal, element_size=4, kv_heads=None
    ) -> int:
        d, m = head_dim, 2 * head_dim
        repeated = repeat_bytes(batch, heads, kv_heads, kv_len, d, element_size)
        if causal:
            return self.causal_memory(batch, heads, q_len, head_dim, element_size) + repeated
        # projections (D) and features (2D) of queries and keys, V with its ones column, the
        # (2D, D + 1) summary and the output with its denominator column
        per_head = (q_len + kv_len) * (d + m) + kv_len * (d + 1) + m * (d + 1) + q_len * (d + 1)
        return batch * heads * per_head * element_size + repeated
