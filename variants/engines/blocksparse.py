"""Block-sparse attention through one fused SDPA call: query blocks as heads, plus global rows.

The kernel shared by Longformer's ``chunked`` backend and BigBird. Queries are cut into blocks of
``block`` rows (the last one zero-padded). The caller gives every query block its own ``S`` key
and value slots, ``(B*H, nqb, S, D)`` (Longformer: an overlapping view of one padded key buffer;
BigBird: one gather of key blocks), and a boolean ``(nqb, block, S)`` mask of the slots each row
sees. The blocks go to ``F.scaled_dot_product_attention`` as if they were heads, so the fused
kernels (CPU flash, CUDA memory-efficient) score, mask and normalise in tiles without forming
any block's score matrix. The first ``num_global`` queries attend to every key (a second call).

:func:`block_sparse_attention` runs through autograd (any device); :func:`fused_block_sparse` is
the same computation as one ``torch.autograd.Function`` on the CPU flash kernel
(:func:`fused_available`): the forward keeps the output and log-sum-exp, the backward is the
kernel's own and hands the slots' gradient to the caller's :class:`SlotLayout` to fold back onto
the keys (docs/performance.md). Work per head is ``rows * S`` score slots plus
``num_global * Nk`` (:func:`block_sparse_flops`). The reference is
:mod:`variants.engines.blocksparse_naive`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

_aten = torch.ops.aten
#: dtypes of the CPU flash kernel (it also needs equal head sizes for keys and values)
_FLASH_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def to_blocks(x: Tensor, block: int) -> Tensor:
    """``(B, H, N, E)`` -> ``(B*H, ceil(N / block), block, E)``, zero-padded at the end.

    A view of ``x`` when no padding is needed and ``x`` is contiguous (``F.pad`` copies even
    when it pads nothing), else a padded copy.
    """
    b, h, n, e = x.shape
    nblocks = -(-n // block)
    if nblocks * block == n and x.is_contiguous():
        return x.view(b * h, nblocks, block, e)
    return F.pad(x, (0, 0, 0, nblocks * block - n)).view(b * h, nblocks, block, e)


def keep_dropped_rows(allowed: Tensor, rows: Tensor, q_len: int, num_global: int) -> Tensor:
    """``allowed`` with every slot of the rows that are discarded (padding, global queries) on.

    A row whose slots are all masked gives NaNs, which the softmax backward would carry into the
    key and value gradients even though the row itself is dropped; an unmasked row stays finite.

    Args:
        allowed: Boolean ``(nqb, block, S)`` slot mask.
        rows: Query index of each mask row, broadcastable to ``allowed``.
        q_len: Number of real queries (rows at or past it are padding).
        num_global: Global queries (their rows are replaced by full attention).
    """
    return allowed | (rows >= q_len) | (rows < num_global)


def block_sparse_attention(
    q: Tensor, k_slots: Tensor, v_slots: Tensor, mask: Tensor,
    k: Tensor, v: Tensor, num_global: int, causal: bool, scale: float,
) -> Tensor:  # fmt: skip
    """Each query block attends to its own key slots; global queries attend to every key.

    Args:
        q: ``(B, H, Nq, D)`` queries.
        k_slots: ``(B*H, nqb, S, D)`` key slots of every query block.
        v_slots: ``(B*H, nqb, S, Dv)`` value slots, in the same order.
        mask: Boolean ``(nqb, block, S)``, True where a row sees a slot (shared by batch and
            heads; see :func:`keep_dropped_rows`).
        k: ``(B, H, Nk, D)`` all keys, for the global rows.
        v: ``(B, H, Nk, Dv)`` all values.
        num_global: The first ``num_global`` queries attend to every key.
        causal: Global rows obey the bottom-right causal mask (the slot mask holds the rest).
        scale: Softmax scale.

    Returns:
        ``(B, H, Nq, Dv)``.
    """
    b, h, nq, _ = q.shape
    nk, dv = k.shape[-2], v.shape[-1]
    nqb, block = mask.shape[:2]
    out = F.scaled_dot_product_attention(
        to_blocks(q, block), k_slots, v_slots, attn_mask=mask[None], scale=scale
    )  # (B*H, nqb, block, Dv)
    out = out.reshape(b * h, nqb * block, dv)[:, :nq].view(b, h, nq, dv)
    if not num_global:
        return out
    rows = global_rows_mask(num_global, nq, nk, causal, q.device)
    g_out = F.scaled_dot_product_attention(
        q[:, :, :num_global], k, v, attn_mask=rows, scale=scale
    )  # (B, H, num_global, Dv)
    return torch.cat([g_out, out[:, :, num_global:]], dim=2)  # (B, H, Nq, Dv)


def global_rows_mask(
    num_global: int, q_len: int, kv_len: int, causal: bool, device, dtype=torch.bool
) -> Tensor | None:
    """The global query rows of the bottom-right causal mask, ``(num_global, Nk)``; None if not
    causal. Boolean, or additive (0 / -inf) in a floating ``dtype``."""
    if not causal:
        return None
    pos = torch.arange(num_global, device=device)[:, None] + (kv_len - q_len)
    rows = torch.arange(kv_len, device=device) <= pos  # (num_global, Nk)
    return rows if dtype == torch.bool else additive_mask(rows, dtype)


def additive_mask(allowed: Tensor, dtype: torch.dtype) -> Tensor:
    """0 where ``allowed``, -inf elsewhere, in ``dtype`` (the CPU flash kernel's mask type)."""
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill_(
        ~allowed, float("-inf")
    )


def fused_available(q: Tensor, k: Tensor, v: Tensor) -> bool:
    """Whether :func:`fused_block_sparse` runs these inputs (CPU flash kernel, ``Dv == D``)."""
    return (
        q.device.type == "cpu"
        and q.dtype in _FLASH_DTYPES
        and q.shape[-1] == v.shape[-1]
        and hasattr(_aten, "_scaled_dot_product_flash_attention_for_cpu")
    )


class SlotLayout(Protocol):
    """Where every query block's key slots live: a stored buffer and a view of it."""

    def store(self, x: Tensor) -> Tensor:
        """The buffer holding the slots of ``x`` (``(B, H, Nk, E)``, keys or values)."""

    def view(self, store: Tensor) -> Tensor:
        """The ``(B*H, nqb, S, E)`` slots, a view of ``store``."""

    def fold(self, grad: Tensor, like: Tensor, into: Tensor | None = None) -> Tensor:
        """The gradient of ``x`` (shaped like ``like``) from the gradient of its slots, added
        into ``into`` when given."""


@dataclass(frozen=True)
class GlobalKeys:
    """The first ``count`` keys, seen by the block rows outside their slots.

    :func:`fused_block_sparse` scores them apart, ``(rows, count)`` per head, and merges them into
    the block rows through the log-sum-exp, as split attention is merged: with ``l_b`` the
    slots' and ``l_g`` the global keys' log-sum-exp, the row is ``o_b + w (o_g - o_b)``, ``w =
    exp(l_g - logaddexp(l_b, l_g))``. The slots then hold no copy of the global keys (a key
    block of 64 slots, not 65), the key buffer is a padded copy rather than a gather, and the
    backward runs the kernel's own with the merged output and log-sum-exp (which make its
    probabilities the whole row's), the global keys' few columns by hand.

    Attributes:
        count: Global keys (the first ``count``).
        mask: Additive ``(R, count)`` mask in q's dtype over the ``R = nqb * block`` padded
            block rows (causal: keys after the row's position), or None when every row sees
            them.
        band_empty: Boolean ``(R,)``: rows whose slots are all masked (the CPU flash kernel
            gives such a row output 0 and log-sum-exp 0, not -inf), or None when there are none.
    """

    count: int
    mask: Tensor | None
    band_empty: Tensor | None


@dataclass(frozen=True)
class BlockPlan:
    """One blocking of the queries for :func:`fused_block_sparse`.

    Attributes:
        block: Query rows per block.
        layout: Builds the slots of k and v and folds their gradients back (no autograd runs
            through it).
        mask: Additive ``(1, nqb, block, S)`` mask in q's dtype (:func:`additive_mask` of the
            boolean mask of :func:`block_sparse_attention`).
        keys: Global keys outside the slots, merged into every block row (:class:`GlobalKeys`);
            None when the slots hold all the keys a row sees.
    """

    block: int
    layout: SlotLayout
    mask: Tensor
    keys: GlobalKeys | None = None


def fused_block_sparse(
    q: Tensor, k: Tensor, v: Tensor, forward: BlockPlan, backward: BlockPlan,
    num_global: int, causal: bool, scale: float,
) -> Tensor:  # fmt: skip
    """:func:`block_sparse_attention` as one autograd Function on the CPU flash kernel.

    The forward and the backward may block the queries differently: a row's output and
    log-sum-exp, all the backward needs of the forward, do not depend on the blocking. Small
    blocks waste fewer slots in the forward, but the backward writes a key and value gradient
    per slot, which small blocks multiply (docs/performance.md).

    Args:
        q, k, v: ``(B, H, Nq, D)``, ``(B, H, Nk, D)``, ``(B, H, Nk, D)``.
        forward, backward: The blockings of each pass (:class:`BlockPlan`; the same object
            when they agree).
        num_global, causal, scale: As :func:`block_sparse_attention`.

    Returns:
        ``(B, H, Nq, D)``.
    """
    return _FusedBlockSparse.apply(q, k, v, (forward, backward, num_global, causal, scale))


def _global_scores(qf: Tensor, kg: Tensor, keys: GlobalKeys, scale: float) -> Tensor:
    """Scaled, masked scores ``(BH, R, count)`` of the block rows ``qf`` against the global
    keys ``kg (BH, count, D)``, in float32 at least."""
    s = torch.bmm(qf, kg.transpose(1, 2)).mul_(scale)
    if keys.mask is not None:
        s.add_(keys.mask)
    return s.to(torch.promote_types(s.dtype, torch.float32))


def _merge_global_keys(qf, kg, vg, of, lse, keys: GlobalKeys, scale: float) -> None:
    """Merges the global keys into the block rows ``of (BH, R, D)`` and their log-sum-exp
    ``lse (BH, R)``, both in place (:class:`GlobalKeys`)."""
    if keys.band_empty is not None:
        lse.masked_fill_(keys.band_empty, float("-inf"))
    s = _global_scores(qf, kg, keys, scale)  # (BH, R, count)
    lse_g = torch.logsumexp(s, dim=-1)  # (BH, R)
    total = torch.logaddexp(lse, lse_g)
    weight = torch.exp(lse_g - total).unsqueeze(-1).to(of.dtype)  # (BH, R, 1)
    og = vg if keys.count == 1 else torch.bmm(torch.softmax(s, -1).to(vg.dtype), vg)
    of.lerp_(og.expand_as(of), weight)  # (BH, 1 or R, D)
    lse.copy_(total)


def _global_keys_backward(qf, kg, vg, of, dof, lse, keys: GlobalKeys, scale: float):
    """The global keys' share of the backward, given the merged output ``of`` and log-sum-exp
    ``lse`` and the block rows' output gradient ``dof``: ``(dq (BH, R, D), dk, dv (BH, count,
    D))``, with ``p = exp(s - lse)`` the rows' whole-softmax probabilities of those keys."""
    p = _global_scores(qf, kg, keys, scale).sub_(lse.unsqueeze(-1)).exp_()  # (BH, R, count)
    dv = torch.bmm(p.to(dof.dtype).transpose(1, 2), dof)
    # the rows' D = dO . O, elementwise (not counted as a product, as in the kernel's backward)
    rowdot = (dof.to(p.dtype) * of.to(p.dtype)).sum(-1, keepdim=True)  # (BH, R, 1)
    ds = p.mul_(torch.bmm(dof, vg.transpose(1, 2)).to(p.dtype).sub_(rowdot)).to(qf.dtype)
    dq = torch.bmm(ds, kg).mul_(scale)
    dk = torch.bmm(ds.transpose(1, 2), qf).mul_(scale)
    return dq, dk, dv


class _FusedBlockSparse(torch.autograd.Function):
    """Forward keeps the flash kernel's output and log-sum-exp; backward is the kernel's own."""

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, spec: tuple) -> Tensor:
        plan, _, glob, causal, scale = spec
        b, h, nq, d = q.shape
        nk = k.shape[-2]
        qb = to_blocks(q, plan.block)  # (BH, nqb, block, D)
        layout = plan.layout
        out, lse = _aten._scaled_dot_product_flash_attention_for_cpu(
            qb, layout.view(layout.store(k)), layout.view(layout.store(v)),
            attn_mask=plan.mask, scale=scale,
        )  # (BH, nqb, block, D), (BH, nqb, block) laid out (BH, block, nqb)  # fmt: skip
        if plan.keys is not None:  # the global keys, merged through the log-sum-exp
            qf, (kg, vg) = qb.view(b * h, -1, d), _global_kv(k, v, plan.keys.count)
            lse = lse.reshape(b * h, -1).clone()  # (BH, R), rows in order
            _merge_global_keys(qf, kg, vg, out.view(b * h, -1, d), lse, plan.keys, scale)
        full = out.view(b, h, -1, d)  # (B, H, nqb * block, D), padded rows at the end
        g_lse = g_mask = None
        if glob:  # global rows over every key replace their block rows (dropped in backward)
            g_mask = global_rows_mask(glob, nq, nk, causal, q.device, q.dtype)
            g_out, g_lse = _aten._scaled_dot_product_flash_attention_for_cpu(
                q[:, :, :glob], k, v, attn_mask=g_mask, scale=scale
            )
            full[:, :, :glob] = g_out
        ctx.spec, ctx.g_mask = spec, g_mask
        ctx.save_for_backward(q, k, v, out, lse, g_lse)
        return full[:, :, :nq]

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:
        _, plan, glob, causal, scale = ctx.spec
        q, k, v, out, lse, g_lse = ctx.saved_tensors
        b, h, nq, d = q.shape
        block, layout, keys = plan.block, plan.layout, plan.keys
        # the forward's rows in the backward's blocking (a view when the two agree)
        rows = -(-nq // block) * block
        out = _rows(out.view(b * h, -1, d), nq, rows).view(b * h, -1, block, d)
        lse = _rows(lse.reshape(b * h, -1, 1), nq, rows).view(b * h, -1, block)
        qb = to_blocks(q, block)
        grad_b = to_blocks(grad, block)  # (BH, nqb, block, D)
        if glob:  # the block rows of global queries were replaced: no gradient through them
            if grad_b.untyped_storage().data_ptr() == grad.untyped_storage().data_ptr():
                grad_b = grad_b.clone()  # a view of the incoming gradient: not ours to zero
            grad_b.view(b * h, -1, d)[:, :glob] = 0
        dq_b, dk_slots, dv_slots = _aten._scaled_dot_product_flash_attention_for_cpu_backward(
            grad_b, qb, layout.view(layout.store(k)), layout.view(layout.store(v)), out, lse,
            0.0, False, attn_mask=plan.mask, scale=scale,
        )  # fmt: skip
        dk = dv = None
        if keys is not None:  # the global keys' columns of the same softmax
            qf, (kg, vg) = qb.view(b * h, -1, d), _global_kv(k, v, keys.count)
            dq_g, dkg, dvg = _global_keys_backward(
                qf, kg, vg, out.view(b * h, -1, d), grad_b.reshape(b * h, -1, d),
                lse.reshape(b * h, -1), keys, scale,
            )  # fmt: skip
            dq_b = dq_b.reshape(b * h, -1, d).add_(dq_g)
        dq = dq_b.reshape(b, h, -1, d)[:, :, :nq]
        if glob:  # the global rows' key and value gradients take the folded slots' too
            full = out.view(b, h, -1, d)
            dq_g, dk, dv = _aten._scaled_dot_product_flash_attention_for_cpu_backward(
                grad[:, :, :glob].contiguous(), q[:, :, :glob], k, v, full[:, :, :glob],
                g_lse, 0.0, False, attn_mask=ctx.g_mask, scale=scale,
            )  # fmt: skip
            dq = dq.contiguous()
            dq[:, :, :glob] = dq_g
        dk, dv = layout.fold(dk_slots, k, dk), layout.fold(dv_slots, v, dv)
        if keys is not None:
            dk[:, :, : keys.count] += dkg.view(b, h, keys.count, d)
            dv[:, :, : keys.count] += dvg.view(b, h, keys.count, d)
        return dq, dk, dv, None


def _rows(x: Tensor, n: int, rows: int) -> Tensor:
    """``x (BH, R, E)``'s first ``n`` rows padded with zeros to ``rows``: ``x`` itself when it
    has them already (the blockings agree)."""
    if x.shape[1] == rows:
        return x
    return F.pad(x[:, :n], (0, 0, 0, rows - n))


def _global_kv(k: Tensor, v: Tensor, count: int) -> tuple[Tensor, Tensor]:
    """The first ``count`` keys and values as ``(B*H, count, D)``."""
    b, h, _, d = k.shape
    return k[:, :, :count].reshape(b * h, count, d), v[:, :, :count].reshape(b * h, count, -1)


def block_sparse_flops(
    batch: int, heads: int, head_dim: int, rows: int, slots: int, num_global: int, kv_len: int
) -> int:
    """Forward FLOPs of :func:`block_sparse_attention`: every padded row scores all its slots
    (masked ones included) and multiplies by V (``2 * 2 * D`` per slot), plus the global rows
    over all ``kv_len`` keys."""
    return 4 * batch * heads * head_dim * (rows * slots + num_global * kv_len)


def global_key_flops(rows: int, count: int, head_dim: int, backward: bool = False) -> int:
    """Matmul FLOPs per head of :class:`GlobalKeys` over ``rows`` block rows: the forward's
    scores (``2 R c D``) and, with several keys, their product with the values (one key is
    mixed in elementwise); the backward's scores again and four products (``dV``, ``dP``,
    ``dQ``, ``dK``)."""
    if not count:
        return 0
    one = 2 * rows * count * head_dim
    return 5 * one if backward else one * (1 if count == 1 else 2)
