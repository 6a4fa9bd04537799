"""The chunked streaming of :mod:`variants.engines.prefix`: the groups of chunks, the forward,
and the running sums across chunks that the forward and the backward share.

The queries are cut into chunks of ``chunk`` tokens, streamed in groups of whole chunks
(:func:`chunk_groups`). Within a chunk, the masked quadratic form ``tril(phi_q_c phi_k_c^T)
[v_c, 1]`` (batched over the group's chunks; the ones column carries the denominator); across
chunks, one running ``(Dv + 1, m)`` state ``sum_{j < c} [v_j, 1]^T phi_k_j`` per (batch, head),
read by each chunk's queries and then updated in place. Key logits (``key_is_log``) become
``exp(logits - c)`` with ``c`` the running max over the keys so far; the state is rescaled when
it grows. On the CPU the chunks of a group are streamed one by one in cache; elsewhere
(:func:`is_batched`) a group's states come from one product and one ``cumsum``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

#: Query elements (batch x heads x tokens x head_dim) per streamed group: 2^17 is 256 tokens at
#: 8 heads of 64, where a group's features (0.5-2 MB) stay in cache (docs/performance.md).
GROUP_ELEMENTS = 1 << 17
#: States of at most this many elements per (batch, head) (``m (Dv + 1)``: linear attention's)
#: are formed for every chunk by G adds and read in one product; larger ones (Performer's) are
#: scanned chunk by chunk in cache (docs/performance.md).
SMALL_STATE = 1 << 13
#: Devices that stream their groups chunk by chunk in cache; elsewhere :func:`is_batched`.
STREAMED_DEVICES = frozenset({"cpu"})
#: Query elements per batched group, whose ``(B H, G, Dv + 1, m)`` states exist at once (272 MB
#: for Performer's 256 features in fp32 at 8192 tokens, 16 heads of 64: one group).
DEVICE_GROUP_ELEMENTS = 1 << 23


def is_batched(x: Tensor) -> bool:
    """Whether ``x``'s device sums a group's chunks in one batch (GPUs) rather than streaming
    them one by one in cache (the CPU)."""
    return x.device.type not in STREAMED_DEVICES


def group_elements(batched: bool = False) -> int:
    """The default query elements per group: :data:`GROUP_ELEMENTS` streamed,
    :data:`DEVICE_GROUP_ELEMENTS` ``batched``."""
    return DEVICE_GROUP_ELEMENTS if batched else GROUP_ELEMENTS


def chunk_groups(
    shape: Sequence[int], chunk: int, batched: bool = False, elements: int | None = None
) -> list[tuple[int, int, int]]:
    """``(start, chunks, chunk size)`` of the groups of ``(B, H, Nq, D)`` queries: groups of whole
    chunks of about ``elements`` query elements (default :func:`group_elements`), then the
    ragged tail as one shorter chunk of its own."""
    b, h, q_len, d = shape
    c = min(chunk, q_len)
    elements = elements or group_elements(batched)
    per_group = max(1, elements // (b * h * d * c))
    full = q_len // c * c
    plan = [(s, min(per_group, (full - s) // c), c) for s in range(0, full, per_group * c)]
    if full < q_len:
        plan.append((full, 1, q_len - full))
    return plan


def ones_values(v: Tensor, start: int, stop: int) -> Tensor:
    """``v[:, :, start:stop]`` and a column of ones (the denominator): ``(B, H, T, Dv + 1)``."""
    part = v[:, :, start:stop]
    out = v.new_empty(*part.shape[:-1], part.shape[-1] + 1)
    out[..., :-1].copy_(part)
    out[..., -1].fill_(1.0)
    return out


def shift_exp(logits: Tensor, top: Tensor | None) -> tuple[Tensor, Tensor, Tensor | None]:
    """``exp(logits - running max)`` in place over ``(B, H, T, m)`` logits.

    Returns the features, the new running max ``(B, H, 1, 1)`` and the factor that rescales a
    state kept relative to the previous running max (None when there was none).
    """
    new = logits.amax(dim=(-2, -1), keepdim=True)
    factor = None
    if top is not None:
        new = torch.maximum(new, top)
        factor = torch.exp(top - new)
    return logits.sub_(new).exp_(), new, factor


def accumulate(total: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """``total += a @ b`` batched, in place (as ``baddbmm(out=)``: ``FlopCounterMode`` does not
    count the in-place method ``baddbmm_``)."""
    return torch.baddbmm(total, a, b, out=total)


def flat_chunks(x: Tensor, c: int) -> Tensor:
    """``(B, H, G * c, E)`` -> ``(B H G, c, E)``: the chunks as one bmm batch."""
    return x.reshape(-1, c, x.shape[-1])


def stream_forward(q, k, v, maps, chunk, params, saved: list | None, group=None) -> Tensor:
    """The streamed forward in groups of about ``group`` query elements (default
    :func:`group_elements`); appends ``(states, max, unnormalised output)`` per group to
    ``saved`` when given (for :func:`stream_backward`)."""
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
            phi, top, _ = shift_exp(phi, None)
        state = torch.bmm(
            flat_chunks(ones_values(v, 0, offset), offset).transpose(1, 2),
            flat_chunks(phi, offset),
        )
    if saved is not None:
        saved.append(top)
    batched = is_batched(q)
    for start, g, c in chunk_groups(q.shape, chunk, batched, group):
        stop = start + g * c
        phi_q = maps.query(q[:, :, start:stop], *params)  # (B, H, T, m), T = G c
        phi_k = maps.key(k[:, :, offset + start : offset + stop], *params)
        if maps.key_is_log:
            phi_k, top, factor = shift_exp(phi_k, top)
            if factor is not None:
                state.mul_(factor.view(-1, 1, 1))
        qf, kf = flat_chunks(phi_q, c), flat_chunks(phi_k, c)  # (B H G, c, m)
        vf = flat_chunks(ones_values(v, offset + start, offset + stop), c)  # (B H G, c, Dv + 1)
        m, e = qf.shape[-1], vf.shape[-1]
        if state is None:
            state = v.new_zeros(b * h, e, m)
        o = torch.bmm(torch.bmm(qf, kf.transpose(1, 2)).tril_(), vf)  # the chunks' own keys
        states = across_chunks(state, qf, kf, vf, o, g, saved is not None, batched)
        o4 = o.view(b, h, g * c, e)
        torch.div(o4[..., :dv], o4[..., dv:].clamp_min(tiny), out=out[:, :, start:stop])
        if saved is not None:
            saved.append((states, top, o))
    return out


def scan(terms: Tensor, carry: Tensor, reverse: bool = False) -> Tensor:
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


def across_chunks(state, qf, kf, vf, o, g, keep, batched=False) -> Tensor | None:
    """Adds to ``o`` each chunk's read-out of the state before it and moves ``state`` past the
    group's ``g`` chunks, in place; returns every chunk's incoming state when ``keep``.
    ``batched``: the states by one product and one :func:`scan`, no loop over the chunks."""
    bh, (c, m), e = state.shape[0], qf.shape[-2:], vf.shape[-1]
    if batched:
        states = scan(torch.bmm(vf.transpose(1, 2), kf).view(bh, g, e, m), state)
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
            accumulate(state, v4[j], k4[j])
        if not keep:
            o.view(bh, g, c, e).add_(inter.transpose(0, 1))
            return None
    accumulate(o, qf, states.view(-1, e, m).transpose(1, 2))
    return states if keep else None


def suffix_states(carry: Tensor, qf: Tensor, d_o: Tensor, g: int, batched=False) -> Tensor:
    """Each chunk's ``R^T = sum dO^T phi_q`` over the queries after it (``(B H, G, Dv + 1, m)``),
    ``carry`` (the groups after) moved past this group's ``g`` chunks in place."""
    bh, (c, m), e = carry.shape[0], qf.shape[-2:], d_o.shape[-1]
    if batched:
        return scan(torch.bmm(d_o.transpose(1, 2), qf).view(bh, g, e, m), carry, reverse=True)
    suffix = carry.new_empty(bh, g, e, m)
    slots = suffix.unbind(1)
    if m * e <= SMALL_STATE:  # as in across_chunks: one product, then adds
        terms = torch.bmm(d_o.transpose(1, 2), qf).view(bh, g, e, m).unbind(1)
        slots[-1].copy_(carry)
        for j in reversed(range(g - 1)):
            torch.add(slots[j + 1], terms[j + 1], out=slots[j])
        torch.add(slots[0], terms[0], out=carry)
        return suffix
    q4, do4 = qf.view(bh, g, c, m).unbind(1), d_o.view(bh, g, c, e).transpose(2, 3).unbind(1)
    for j in reversed(range(g)):
        slots[j].copy_(carry)
        accumulate(carry, do4[j], q4[j])
    return suffix
