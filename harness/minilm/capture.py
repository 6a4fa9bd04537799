"""Real queries, keys and values: what MiniLM's self-attention receives on real English text.

Forward hooks on one layer's ``query``/``key``/``value`` projections record their outputs (the
model's own tensors, bias included); the forward pass is cut short after that layer so later
layers cost nothing.

Public: :func:`capture_qkv`, :func:`sentence_qkv` and :func:`minilm_qkv`, the harness's
``minilm`` input generator (registered with ``harness.measure.inputs`` when this module is
imported).
"""

from __future__ import annotations

import contextlib
import functools

import torch
from torch import Tensor

from harness.measure.inputs import register_generator
from harness.minilm.limits import HEAD_DIM, MAX_TOKENS, NUM_HEADS, NUM_LAYERS
from harness.minilm.model import encode, load_model, load_tokenizer
from harness.minilm.texts import count_tokens, pydoc_texts
from variants.base import check_int


class _StopForward(Exception):
    """Raised by the capture hook once the wanted layer's q, k, v are in hand."""


def _check_layer(layer: int) -> None:
    check_int("minilm", "layer", layer, low=0, high=NUM_LAYERS - 1, error=ValueError)


def _check_head(head: int) -> None:
    check_int("minilm", "head", head, low=0, high=NUM_HEADS - 1, error=ValueError)


def capture_qkv(batch: dict[str, Tensor], layer: int) -> tuple[Tensor, Tensor, Tensor]:
    """q, k, v of every head of one self-attention layer, ``(B, 12, N, 32)`` float32 each.

    Args:
        batch: A tokenized batch (:func:`harness.minilm.model.encode`).
        layer: Layer index, 0..5.
    """
    _check_layer(layer)
    model = load_model("cpu")
    attn = model.encoder.layer[layer].attention.self
    captured: dict[str, Tensor] = {}

    def hook(name: str):
        def record(_module, _inputs, output: Tensor) -> None:
            b, n, _ = output.shape  # (B, N, H * D)
            captured[name] = output.detach().view(b, n, NUM_HEADS, HEAD_DIM).transpose(1, 2)
            if name == "value":
                raise _StopForward

        return record

    handles = [
        getattr(attn, name).register_forward_hook(hook(name)) for name in ("query", "key", "value")
    ]
    try:
        with torch.no_grad(), contextlib.suppress(_StopForward):  # stops after the last hook
            model(**batch)
    finally:
        for handle in handles:
            handle.remove()
    return captured["query"], captured["key"], captured["value"]  # (B, H, N, D) each


def sentence_qkv(
    text: str, layer: int = 0, head: int | None = 0
) -> tuple[Tensor, Tensor, Tensor, list[str]]:
    """q, k, v of one text at one layer and head, with its tokens.

    Args:
        text: Any text; truncated to 512 tokens.
        layer: Layer index, 0..5.
        head: Head index, 0..11; ``None`` keeps all 12 heads.

    Returns:
        ``(q, k, v, tokens)``: q, k, v of shape ``(1, 1, N, 32)`` (``(1, 12, N, 32)`` when
        ``head`` is None), float32 on the CPU; ``tokens`` the N word pieces, [CLS] and [SEP]
        included.
    """
    if head is not None:
        _check_head(head)
    batch = encode([text])
    q, k, v = capture_qkv(batch, layer)
    tokens = load_tokenizer().convert_ids_to_tokens(batch["input_ids"][0].tolist())
    if head is not None:
        q, k, v = (t[:, head : head + 1] for t in (q, k, v))
    return q.contiguous(), k.contiguous(), v.contiguous(), tokens


@functools.lru_cache(maxsize=8)
def _captured(
    batch: int, q_len: int, seed: int, layer: int, text: str | None
) -> tuple[Tensor, Tensor, Tensor]:
    """Cached CPU float32 capture for :func:`minilm_qkv` (a sweep asks for the same inputs per
    variant; the forward pass is the expensive part)."""
    if text is None:
        texts = pydoc_texts(batch, min_tokens=q_len, seed=seed)
    else:
        (count,) = count_tokens([text])
        if count < q_len:
            raise ValueError(
                f"minilm: text has {count} tokens, fewer than q_len={q_len}; pass a longer text "
                "or leave text unset to draw pydoc passages"
            )
        texts = [text] * batch
    return capture_qkv(encode(texts, q_len), layer)


def minilm_qkv(
    batch: int,
    heads: int,
    q_len: int,
    kv_len: int,
    head_dim: int,
    dtype: torch.dtype | str,
    device: torch.device | str,
    seed: int,
    layer: int = 0,
    head: int | None = None,
    text: str | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """The harness's ``minilm`` inputs: real q, k, v of all-MiniLM-L6-v2 on pydoc text.

    Each batch item is a different passage of exactly ``q_len`` tokens (drawn by ``seed``);
    its q, k, v are those the model's self-attention receives at ``layer``.

    Args:
        batch: Number of passages.
        heads: Number of heads to return, 1..12.
        q_len: Tokens per passage (self-attention: equal to ``kv_len``), 2..512.
        kv_len: Must equal ``q_len``.
        head_dim: Must be 32, MiniLM's head dimension.
        dtype: Output dtype (captured in float32, then cast).
        device: Output device.
        seed: Chooses the passages.
        layer: Layer index, 0..5.
        head: First head; heads ``head .. head + heads - 1`` are returned. ``None`` means 0.
        text: Use this text (repeated over the batch) instead of pydoc passages; it must have
            at least ``q_len`` tokens.

    Returns:
        ``(q, k, v)``, each ``(batch, heads, q_len, 32)``, contiguous.

    Raises:
        ValueError: A field out of range (the message names it).
        RealModelUnavailable: transformers or the model package is missing.
    """
    for field, value in (("batch", batch), ("heads", heads), ("q_len", q_len)):
        check_int("minilm", field, value, low=1, error=ValueError)
    if kv_len != q_len:
        raise ValueError(
            f"minilm: kv_len={kv_len} must equal q_len={q_len} (captured self-attention)"
        )
    if not 2 <= q_len <= MAX_TOKENS:
        raise ValueError(f"minilm: q_len={q_len} must be in [2, {MAX_TOKENS}] (model positions)")
    if head_dim != HEAD_DIM:
        raise ValueError(f"minilm: head_dim={head_dim} must be {HEAD_DIM} (MiniLM's head size)")
    first = 0 if head is None else head
    _check_head(first)
    if first + heads > NUM_HEADS:
        raise ValueError(
            f"minilm: heads={heads} starting at head={first} exceeds the model's {NUM_HEADS} heads"
        )
    _check_layer(layer)
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    q, k, v = _captured(batch, q_len, int(seed), layer, text)
    return tuple(  # type: ignore[return-value]
        t[:, first : first + heads].to(device=device, dtype=dtype).contiguous() for t in (q, k, v)
    )


# Looked up at call time (not bound here), so tests can replace ``minilm_qkv``.
register_generator("minilm", lambda *args, **params: minilm_qkv(*args, **params))
