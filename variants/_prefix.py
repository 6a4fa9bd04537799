"""Streamed causal kernel attention: the prefix sums shared by linear, Performer and Hedgehog.

Kernelised attention (Katharopoulos et al. 2020, "Transformers are RNNs"; Choromanski et al.
2020, "Rethinking Attention with Performers") writes causal attention with feature maps
``phi_q``, ``phi_k`` as ``out_i = sum_{j <= i} (phi_q_i . phi_k_j) v_j / sum_{j <= i} phi_q_i .
phi_k_j``. The queries are cut into chunks of ``chunk`` tokens, streamed in groups of whole
chunks (:func:`chunk_groups`, about :data:`GROUP_ELEMENTS` query elements each):

* the group's query and key features are made here from the caller's :class:`FeatureMaps`, so
  no ``(n, m)`` feature tensor is ever formed and each group's buffers stay in cache;
* within a chunk, the masked quadratic form ``tril(phi_q_c phi_k_c^T) [v_c, 1]``, batched over
  the group's chunks (the ones column of V carries the denominator);
* across chunks, one running ``(Dv + 1, m)`` state ``sum_{j < c} [v_j, 1]^T phi_k_j`` per
  (batch, head), read by each chunk's queries, then updated in place: two bmm per chunk, and
  no ``(chunks, m, Dv)`` tensor of every chunk's state (without autograd).

Key features given as logits (``FeatureMaps.key_is_log``: Performer's ``W k - |k|^2 / 2``) are
``exp(logits - c)`` with ``c`` the running max over the keys seen so far per head; the state is
rescaled when the max grows (as flash attention does). The shift cancels in the normalised
output, so the result is that of one global shift, without a first pass over all keys.

With autograd (:class:`_StreamedCausal`) the forward also keeps each chunk's incoming state and
the unnormalised output; the backward streams the groups in reverse, carrying the suffix state
``sum_{i > c} dO_i^T phi_q_i``, recomputes each group's features under autograd and pulls the
gradients through the feature maps group by group (features are recomputed, never stored).

On a GPU (:func:`_batched`) each group's states come from one product and one ``cumsum``: the
per-chunk loop's ~1200 launches per Performer forward made it 80x slower than causal SDPA on an
H100 (results/examples/gpu-h100/run3). The products, and so the FLOPs, are the same.

Cross-attention (``Nq <= Nk``) is bottom-right aligned: the first ``Nk - Nq`` keys, seen by
every query, make the initial state. A length that is not a multiple of the chunk ends with a
shorter chunk of its own (no padding).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

#: Query elements (batch x heads x tokens x head_dim) per streamed group: 2^17 is 256 tokens at
#: 8 heads of 64, where a group's features (0.5-2 MB) stay in cache (docs/performance.md).
GROUP_ELEMENTS = 1 << 17
#: States of at most this many elements per (batch, head) (``m (Dv + 1)``: linear attention's)
#: are formed for every chunk by G adds and read in one product; larger ones (Performer's) are
#: scanned chunk by chunk in cache (docs/performance.md).
SMALL_STATE = 1 << 13
#: Devices that stream their groups chunk by chunk in cache; elsewhere :func:`_batched`.
STREAMED_DEVICES = frozenset({"cpu"})
#: Query elements per batched group, whose ``(B H, G, Dv + 1, m)`` states exist at once (272 MB
#: for Performer's 256 features in fp32 at 8192 tokens, 16 heads of 64: one group).
DEVICE_GROUP_ELEMENTS = 1 << 23


@dataclass(frozen=True)
class FeatureMaps:
    """How queries and keys become features; applied group by group inside the prefix sums.

    Attributes:
        query: ``query(x, *params)`` of ``x (..., H, N, D)`` -> ``(..., H, N, m)`` features.
        key: ``key(x, *params)`` -> key features, or their logits when ``key_is_log``.
        key_is_log: ``key`` returns logits ``l``; the features are ``exp(l - c)`` with ``c`` a
            running max per head (module docstring), which cancels in the output.

    Both maps must be differentiable functions of ``x`` and ``params`` (the backward recomputes
    them under autograd); without a graph they may work in place on their own results. Logits
    are shifted and exponentiated in place: ``key`` must return a new tensor whose own backward
    does not need it (a GEMM's output, say).
    """

    query: Callable[..., Tensor]
    key: Callable[..., Tensor]
    key_is_log: bool = False


def with_ones_column(v: Tensor) -> Tensor:
    """``(..., N, Dv)`` -> ``(..., N, Dv + 1)`` with a last column of ones (one ``cat`` of an
    expanded scalar): kernel attention's denominator as one more output column."""
    return torch.cat([v, v.new_ones((1,) * v.dim()).expand(*v.shape[:-1], 1)], dim=-1)


def kernel_attention(phi_q: Tensor, phi_k: Tensor, v: Tensor) -> Tensor:
    """Normalised bidirectional kernel attention ``phi_q (phi_k^T [v, 1])`` with the last column
    (the denominator, positive features) divided out: ``(B, H, Nq, Dv)``."""
    out = phi_q @ (phi_k.transpose(-2, -1) @ with_ones_column(v))  # (B, H, Nq, Dv + 1)
    return out[..., :-1] / out[..., -1:].clamp_min(torch.finfo(out.dtype).tiny)


def causal_linear_attention(
    q: Tensor, k: Tensor, v: Tensor, maps: FeatureMaps, chunk: int, params: Sequence[Tensor] = ()
) -> Tensor:
    """Normalised causal kernel attention over ``j <= i + Nk - Nq``, features made per group.

    Args:
        q: ``(B, H, Nq, D)`` queries.
        k: ``(B, H, Nk, D)`` keys, ``Nk >= Nq``.
        v: ``(B, H, Nk, Dv)`` values.
        maps: The feature maps (:class:`FeatureMaps`).
        chunk: Tokens per chunk of the masked quadratic form.
        params: Tensors the maps take after ``x`` (gradients flow to them).

    Returns:
        ``(B, H, Nq, Dv)``.
    """
    nq, nk = q.shape[-2], k.shape[-2]
    if nk < nq:
        raise ValueError(f"causal kernel attention needs kv_len >= q_len, got {nk} < {nq}")
    params = tuple(params)
    if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v, *params)):
        return _StreamedCausal.apply(maps, chunk, q, k, v, *params)
    return _forward(q, k, v, maps, chunk, params, None)


def _batched(x: Tensor) -> bool:
    """Whether ``x``'s device sums a group's chunks in one batch (GPUs) rather than streaming
    them one by one in cache (the CPU)."""
    return x.device.type not in STREAMED_DEVICES


def chunk_groups(
    shape: Sequence[int], chunk: int, batched: bool = False
) -> list[tuple[int, int, int]]:
    """``(start, chunks, chunk size)`` of the groups of ``(B, H, Nq, D)`` queries: groups of whole
    chunks (:data:`GROUP_ELEMENTS` query elements streamed, :data:`DEVICE_GROUP_ELEMENTS`
    ``batched``), then the ragged tail as one shorter chunk of its own."""
    b, h, q_len, d = shape
    c = min(chunk, q_len)
    elements = DEVICE_GROUP_ELEMENTS if batched else GROUP_ELEMENTS
    per_group = max(1, elements // (b * h * d * c))
    full = q_len // c * c
    plan = [(s, min(per_group, (full - s) // c), c) for s in range(0, full, per_group * c)]
    if full < q_len:
        plan.append((full, 1, q_len - full))
    return plan


def _values(v: Tensor, start: int, stop: int) -> Tensor:
    """``v[:, :, start:stop]`` and a column of ones (the denominator): ``(B, H, T, Dv + 1)``."""
    part = v[:, :, start:stop]
    out = v.new_empty(*part.shape[:-1], part.shape[-1] + 1)
    out[..., :-1].copy_(part)
    out[..., -1].fill_(1.0)
    return out


def _shift(logits: Tensor, top: Tensor | None) -> tuple[Tensor, Tensor, Tensor | None]:
    """``exp(logits - running max)`` in place over ``(B, H, T, m)`` logits.

    Returns the features, the new running max ``(B, H, 1, 1)`` and the factor that rescales a
    state kept relative to the old max (None when there was none).
    """
    new = logits.amax(dim=(-2, -1), keepdim=True)
    factor = None
    if top is not None:
        new = torch.maximum(new, top)
        factor = torch.exp(top - new)
    return logits.sub_(new).exp_(), new, factor


def _accumulate(total: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """``total += a @ b`` batched, in place (as ``baddbmm(out=)``: ``FlopCounterMode`` does not
    count the in-place method ``baddbmm_``)."""
    return torch.baddbmm(total, a, b, out=total)


def _flat(x: Tensor, c: int) -> Tensor:
    """``(B, H, G * c, E)`` -> ``(B H G, c, E)``: the chunks as one bmm batch."""
    return x.reshape(-1, c, x.shape[-1])


def _forward(q, k, v, maps, chunk, params, saved: list | None) -> Tensor:
    """The streamed forward; appends ``(states, max, unnormalised output)`` per group to
    ``saved`` when given (for :func:`_backward`)."""
    b, h, nq, _ = q.shape
    dv = v.shape[-1]
    offset = k.shape[-2] - nq
    tiny = torch.finfo(v.dtype).tiny
    out = v.new_empty(b, h, nq, dv)
    # the running state, transposed (B H, Dv + 1, m): sum of [v, 1]^T phi_k over the keys so
    # far, relative to the running max of the key logits (``top``) when the keys are logits
    state, top = None, None
    if offset:  # the keys every query sees: the initial state
        phi = maps.key(k[:, :, :offset], *params)  # (B, H, offset, m)
        if maps.key_is_log:
            phi, top, _ = _shift(phi, None)
        state = torch.bmm(_flat(_values(v, 0, offset), offset).transpose(1, 2), _flat(phi, offset))
    if saved is not None:
        saved.append(top)
    batched = _batched(q)
    for start, g, c in chunk_groups(q.shape, chunk, batched):
        stop = start + g * c
        phi_q = maps.query(q[:, :, start:stop], *params)  # (B, H, T, m), T = G c
        phi_k = maps.key(k[:, :, offset + start : offset + stop], *params)
        if maps.key_is_log:
            phi_k, top, factor = _shift(phi_k, top)
            if factor is not None:
                state.mul_(factor.view(-1, 1, 1))
        qf, kf = _flat(phi_q, c), _flat(phi_k, c)  # (B H G, c, m)
        vf = _flat(_values(v, offset + start, offset + stop), c)  # (B H G, c, Dv + 1)
        m, e = qf.shape[-1], vf.shape[-1]
        if state is None:
            state = v.new_zeros(b * h, e, m)
        o = torch.bmm(torch.bmm(qf, kf.transpose(1, 2)).tril_(), vf)  # the chunks' own keys
        states = _across_chunks(state, qf, kf, vf, o, g, saved is not None, batched)
        o4 = o.view(b, h, g * c, e)
        torch.div(o4[..., :dv], o4[..., dv:].clamp_min(tiny), out=out[:, :, start:stop])
        if saved is not None:
            saved.append((states, top, o))
    return out


def _scan(terms: Tensor, carry: Tensor, reverse: bool = False) -> Tensor:
    """Exclusive running sums of ``terms (B H, G, E, m)`` over the chunks (dim 1), each plus
    ``carry (B H, E, m)``, by one ``cumsum`` (accumulated in fp32 at least); ``carry`` is moved
    past all ``G`` terms in place. ``reverse``: the sums over the chunks after each one."""
    wide = torch.promote_types(terms.dtype, torch.float32)
    ordered = terms.flip(1) if reverse else terms
    inclusive = torch.cumsum(ordered, dim=1, dtype=wide)  # (B H, G, E, m)
    out = torch.empty_like(terms)
    out[:, 0].copy_(carry)
    out[:, 1:].copy_(inclusive[:, :-1].add_(carry.unsqueeze(1)))
    carry.add_(inclusive[:, -1].to(carry.dtype))
    return out.flip(1) if reverse else out


def _across_chunks(state, qf, kf, vf, o, g, keep, batched=False) -> Tensor | None:
    """Adds to ``o`` each chunk's read-out of the state before it and moves ``state`` past the
    group's ``g`` chunks, in place; returns every chunk's incoming state when ``keep``.
    ``batched``: the states by one product and one :func:`_scan`, no loop over the chunks."""
    bh, (c, m), e = state.shape[0], qf.shape[-2:], vf.shape[-1]
    if batched:
        states = _scan(torch.bmm(vf.transpose(1, 2), kf).view(bh, g, e, m), state)
    elif m * e <= SMALL_STATE:  # the chunks' summaries by one product, their running sums by adds
        summaries = torch.bmm(vf.transpose(1, 2), kf).view(bh, g, e, m).unbind(1)
        states = state.new_empty(bh, g, e, m)
        slots = states.unbind(1)  # views made once: a Python loop pays for every view
        slots[0].copy_(state)
        for j in range(1, g):
            torch.add(slots[j - 1], summaries[j - 1], out=slots[j])
        torch.add(slots[-1], summaries[-1], out=state)
    else:  # chunk by chunk; without autograd each chunk reads the state, kept in cache
        states = state.new_empty(bh, g, e, m) if keep else None
        inter = None if keep else o.new_empty(g, bh, c, e)  # chunk-major: whole blocks
        q4, k4 = qf.view(bh, g, c, m).unbind(1), kf.view(bh, g, c, m).unbind(1)
        v4, read = vf.view(bh, g, c, e).transpose(2, 3).unbind(1), state.transpose(1, 2)
        slots = states.unbind(1) if keep else inter.unbind(0)
        for j in range(g):
            if keep:
                slots[j].copy_(state)
            else:
                torch.bmm(q4[j], read, out=slots[j])
            _accumulate(state, v4[j], k4[j])
        if not keep:
            o.view(bh, g, c, e).add_(inter.transpose(0, 1))
            return None
    _accumulate(o, qf, states.view(-1, e, m).transpose(1, 2))
    return states if keep else None


def _suffix_states(carry: Tensor, qf: Tensor, d_o: Tensor, g: int, batched=False) -> Tensor:
    """Each chunk's ``R^T = sum dO^T phi_q`` over the queries after it (``(B H, G, Dv + 1, m)``),
    ``carry`` (the groups after) moved past this group's ``g`` chunks in place."""
    bh, (c, m), e = carry.shape[0], qf.shape[-2:], d_o.shape[-1]
    if batched:
        return _scan(torch.bmm(d_o.transpose(1, 2), qf).view(bh, g, e, m), carry, reverse=True)
    suffix = carry.new_empty(bh, g, e, m)
    slots = suffix.unbind(1)
    if m * e <= SMALL_STATE:  # as in _across_chunks: one product, then adds
        terms = torch.bmm(d_o.transpose(1, 2), qf).view(bh, g, e, m).unbind(1)
        slots[-1].copy_(carry)
        for j in reversed(range(g - 1)):
            torch.add(slots[j + 1], terms[j + 1], out=slots[j])
        torch.add(slots[0], terms[0], out=carry)
        return suffix
    q4, do4 = qf.view(bh, g, c, m).unbind(1), d_o.view(bh, g, c, e).transpose(2, 3).unbind(1)
    for j in reversed(range(g)):
        slots[j].copy_(carry)
        _accumulate(carry, do4[j], q4[j])
    return suffix


class _StreamedCausal(torch.autograd.Function):
    """:func:`causal_linear_attention` with the streamed backward of :func:`_backward`."""

    @staticmethod
    def forward(ctx, maps, chunk, q, k, v, *params):
        saved: list = []
        out = _forward(q, k, v, maps, chunk, params, saved)
        ctx.save_for_backward(q, k, v, *params)
        ctx.maps, ctx.chunk, ctx.streamed = maps, chunk, saved
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        q, k, v, *params = ctx.saved_tensors
        needs = ctx.needs_input_grad[2:]
        grads = _backward(ctx.maps, ctx.chunk, q, k, v, params, ctx.streamed, grad_out, needs)
        return None, None, *grads


def _recompute(maps, xq, xk, params, needs):
    """A group's features again, under autograd: (inputs, query features, key output); the
    inputs are the two leaves and the parameters, each requiring a gradient where needed."""
    with torch.enable_grad():
        pairs = zip((xq, xk, *params), (*needs[:2], *needs[3:]))
        leaves = [None if x is None else x.detach().requires_grad_(need) for x, need in pairs]
        ps = leaves[2:]
        phi_q = None if xq is None else maps.query(leaves[0], *ps)
        return leaves, phi_q, maps.key(leaves[1], *ps)


def _pull(outputs, grads, inputs) -> list[Tensor | None]:
    """``torch.autograd.grad`` over the outputs that have a graph; None where no gradient."""
    pairs = [(o, g) for o, g in zip(outputs, grads) if o is not None and o.requires_grad]
    wanted = [t for t in inputs if t is not None and t.requires_grad]
    got = iter(())
    if pairs and wanted:
        outs, gs = zip(*pairs)
        got = iter(torch.autograd.grad(outs, wanted, gs, allow_unused=True))
    return [next(got) if t is not None and t.requires_grad else None for t in inputs]


def _add(total: Tensor | None, part: Tensor | None) -> Tensor | None:
    return part if total is None else total if part is None else total + part


def _backward(maps, chunk, q, k, v, params, saved, grad_out, needs):
    """Gradients of :func:`_forward`: the groups in reverse, carrying ``R^T = sum dO^T phi_q``
    of the chunks after (relative to the running max of the chunk's keys), transposed."""
    b, h, nq, _ = q.shape
    dv = v.shape[-1]
    offset = k.shape[-2] - nq
    tiny = torch.finfo(v.dtype).tiny
    dq, dk, dvals = (torch.empty_like(t) if need else None for t, need in zip((q, k, v), needs))
    dparams: list[Tensor | None] = [None] * len(params)
    carry = None  # (B H, Dv + 1, m)
    batched = _batched(q)
    plan = chunk_groups(q.shape, chunk, batched)
    tops = [saved[0]] + [top for _, top, _ in saved[1:]]  # running max before each group
    for i in reversed(range(len(plan))):
        start, g, c = plan[i]
        stop = start + g * c
        states, top, o = saved[i + 1]
        xq, xk = q[:, :, start:stop], k[:, :, offset + start : offset + stop]
        inputs, phi_q, key_out = _recompute(maps, xq, xk, params, needs)
        phi_k = key_out.detach()
        if maps.key_is_log:  # in place: the logits' own backward does not need them
            phi_k = phi_k.sub_(top).exp_()
        qf, kf = _flat(phi_q.detach(), c), _flat(phi_k, c)  # (B H G, c, m)
        vf = _flat(_values(v, offset + start, offset + stop), c)  # (B H G, c, Dv + 1)
        m, e = qf.shape[-1], vf.shape[-1]
        o4 = o.view(b, h, g * c, e)
        den = o4[..., dv:].clamp_min(tiny)  # (B, H, T, 1)
        d_o = torch.empty_like(o4)  # d loss / d unnormalised output (its last column: den)
        torch.div(grad_out[:, :, start:stop], den, out=d_o[..., :dv])
        rowdot = (d_o[..., :dv] * o4[..., :dv]).sum(-1, keepdim=True)  # saved o stays intact
        torch.div(rowdot, den, out=d_o[..., dv:]).neg_()
        d_o = _flat(d_o, c)  # (B H G, c, Dv + 1)
        if carry is None:
            carry = v.new_zeros(b * h, e, m)
        scores = torch.bmm(qf, kf.transpose(1, 2)).tril_()  # (B H G, c, c)
        dscores = torch.bmm(d_o, vf.transpose(1, 2)).tril_()
        d_phi_q = _accumulate(torch.bmm(d_o, states.view(-1, e, m)), dscores, kf)  # (B H G, c, m)
        r = _suffix_states(carry, qf, d_o, g, batched).view(-1, e, m)  # later queries' dO^T phi_q
        d_phi_k = _accumulate(torch.bmm(vf, r), dscores.transpose(1, 2), qf)  # (B H G, c, m)
        d_v = _accumulate(torch.bmm(kf, r.transpose(1, 2)), scores.transpose(1, 2), d_o)
        if maps.key_is_log:
            d_phi_k.mul_(kf)  # through exp: the logits' gradient
        grads = _pull((phi_q, key_out), (d_phi_q.view_as(phi_q), d_phi_k.view_as(key_out)), inputs)
        if dq is not None:
            dq[:, :, start:stop] = grads[0]
        if dk is not None:
            dk[:, :, offset + start : offset + stop] = grads[1]
        if dvals is not None:
            dvals[:, :, offset + start : offset + stop] = d_v.view(b, h, -1, e)[..., :dv]
        dparams = [_add(t, p) for t, p in zip(dparams, grads[2:])]
        if maps.key_is_log and tops[i] is not None:
            carry.mul_(torch.exp(tops[i] - top).view(-1, 1, 1))
    if offset:
        inputs, _, key_out = _recompute(maps, None, k[:, :, :offset], params, needs)
        phi = key_out.detach()
        if maps.key_is_log:
            phi = phi.sub_(tops[0]).exp_()
        phi, vh = _flat(phi, offset), _flat(_values(v, 0, offset), offset)
        d_phi = torch.bmm(vh, carry)  # (B H, offset, m)
        if maps.key_is_log:
            d_phi.mul_(phi)
        grads = _pull((key_out,), (d_phi.view_as(key_out),), inputs)
        if dk is not None:
            dk[:, :, :offset] = grads[1]
        if dvals is not None:
            d_v = torch.bmm(phi, carry.transpose(1, 2))
            dvals[:, :, :offset] = d_v.view(b, h, offset, -1)[..., :dv]
        dparams = [_add(t, p) for t, p in zip(dparams, grads[2:])]
    return [dq, dk, dvals, *dparams]
