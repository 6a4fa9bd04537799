"""The streamed backward of :func:`variants.engines.prefix.causal_linear_attention`.

The forward also keeps each chunk's incoming state and the unnormalised output; the backward
streams the groups in reverse, carrying the suffix state ``sum_{i > c} dO_i^T phi_q_i``,
recomputes each group's features under autograd and pulls the gradients through the feature maps
group by group (features are recomputed, never stored).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from variants.engines.prefix_stream import (
    accumulate,
    chunk_groups,
    flat_chunks,
    is_batched,
    ones_values,
    stream_forward,
    suffix_states,
)


class StreamedCausal(torch.autograd.Function):
    """:func:`causal_linear_attention` with the streamed backward of :func:`stream_backward`."""

    @staticmethod
    def forward(ctx, maps, chunk, group, q, k, v, *params):
        saved: list = []
        out = stream_forward(q, k, v, maps, chunk, params, saved, group)
        ctx.save_for_backward(q, k, v, *params)
        ctx.maps, ctx.chunk, ctx.group, ctx.streamed = maps, chunk, group, saved
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        q, k, v, *params = ctx.saved_tensors
        needs = ctx.needs_input_grad[3:]
        grads = stream_backward(
            ctx.maps, ctx.chunk, q, k, v, params, ctx.streamed, grad_out, needs, ctx.group
        )
        return None, None, None, *grads


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


def stream_backward(maps, chunk, q, k, v, params, saved, grad_out, needs, group=None):
    """Gradients of :func:`stream_forward`: the groups in reverse, carrying
    ``R^T = sum dO^T phi_q`` of the chunks after (relative to the running max of the chunk's
    keys), transposed."""
    b, h, nq, _ = q.shape
    dv = v.shape[-1]
    offset = k.shape[-2] - nq
    tiny = torch.finfo(v.dtype).tiny
    dq, dk, dvals = (torch.empty_like(t) if need else None for t, need in zip((q, k, v), needs))
    dparams: list[Tensor | None] = [None] * len(params)
    carry = None  # (B H, Dv + 1, m)
    batched = is_batched(q)
    plan = chunk_groups(q.shape, chunk, batched, group)
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
        qf, kf = flat_chunks(phi_q.detach(), c), flat_chunks(phi_k, c)  # (B H G, c, m)
        vf = flat_chunks(ones_values(v, offset + start, offset + stop), c)  # (B H G, c, Dv + 1)
        m, e = qf.shape[-1], vf.shape[-1]
        o4 = o.view(b, h, g * c, e)
        den = o4[..., dv:].clamp_min(tiny)  # (B, H, T, 1)
        d_o = torch.empty_like(o4)  # d loss / d unnormalised output (its last column: den)
        torch.div(grad_out[:, :, start:stop], den, out=d_o[..., :dv])
        rowdot = (d_o[..., :dv] * o4[..., :dv]).sum(-1, keepdim=True)  # saved o stays intact
        torch.div(rowdot, den, out=d_o[..., dv:]).neg_()
        d_o = flat_chunks(d_o, c)  # (B H G, c, Dv + 1)
        if carry is None:
            carry = v.new_zeros(b * h, e, m)
        scores = torch.bmm(qf, kf.transpose(1, 2)).tril_()  # (B H G, c, c)
        dscores = torch.bmm(d_o, vf.transpose(1, 2)).tril_()
        d_phi_q = accumulate(torch.bmm(d_o, states.view(-1, e, m)), dscores, kf)  # (B H G, c, m)
        r = suffix_states(carry, qf, d_o, g, batched).view(-1, e, m)  # later queries' dO^T phi_q
        d_phi_k = accumulate(torch.bmm(vf, r), dscores.transpose(1, 2), qf)  # (B H G, c, m)
        d_v = accumulate(torch.bmm(kf, r.transpose(1, 2)), scores.transpose(1, 2), d_o)
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
        phi, vh = flat_chunks(phi, offset), flat_chunks(ones_values(v, 0, offset), offset)
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
