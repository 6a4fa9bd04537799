"""Character-level language modelling on Python's bundled documentation, in bits per character.

The text is ``pydoc_data.topics.topics`` (about 465K characters on every Python install; its
exact content follows the Python version, which every row records). It is split **by topic**
into training and validation text, so that no validation passage is ever trained on: topics
that share a passage (two topics of Python 3.11 hold the same text) are grouped first and a
group goes to one side only. The split does not depend on any seed: groups are ordered by a
hash of their topic names and taken into validation until it holds :data:`VALID_FRACTION` of
the characters.

Training draws random windows of the training text every step; evaluation scores a fixed set of
evenly spaced validation windows and reports bits per character (the mean cross-entropy of
every predicted character, in bits).
"""

from __future__ import annotations

import functools
import hashlib
import math
from dataclasses import dataclass

import torch
from torch import Tensor

#: Share of the corpus's characters that goes to validation.
VALID_FRACTION = 0.1
#: Two topics sharing a passage at least this long (plus the stride) are kept together.
SHARED_WINDOW = 100
_STRIDE = 50
_SEPARATOR = "\n\n"


@dataclass(frozen=True)
class CharCorpus:
    """The split corpus.

    Attributes:
        train_text: Training topics joined by blank lines.
        valid_text: Validation topics joined by blank lines.
        train_topics: Names of the training topics (sorted).
        valid_topics: Names of the validation topics (sorted).
        alphabet: Every character of the corpus, sorted; a character's id is its index.
    """

    train_text: str
    valid_text: str
    train_topics: tuple[str, ...]
    valid_topics: tuple[str, ...]
    alphabet: str

    @property
    def vocab(self) -> int:
        """Number of distinct characters."""
        return len(self.alphabet)

    def encode(self, text: str) -> Tensor:
        """Character ids of ``text`` as an int64 tensor."""
        index = {c: i for i, c in enumerate(self.alphabet)}
        return torch.tensor([index[c] for c in text], dtype=torch.long)


def _topic_groups(topics: dict[str, str]) -> list[list[str]]:
    """Topics joined (union-find) when one holds a window of another of SHARED_WINDOW chars."""
    parent = {name: name for name in topics}

    def root(name: str) -> str:
        while parent[name] != name:
            parent[name] = parent[parent[name]]
            name = parent[name]
        return name

    owner: dict[str, str] = {}
    for name, text in topics.items():
        for start in range(0, max(1, len(text) - SHARED_WINDOW + 1), _STRIDE):
            owner.setdefault(text[start : start + SHARED_WINDOW], name)
    # Every offset of every text against the stride-spaced windows of the others: a shared
    # passage of SHARED_WINDOW + _STRIDE characters holds one whole stride-spaced window.
    for name, text in topics.items():
        for start in range(max(1, len(text) - SHARED_WINDOW + 1)):
            other = owner.get(text[start : start + SHARED_WINDOW])
            if other is not None and root(other) != root(name):
                parent[root(other)] = root(name)
    groups: dict[str, list[str]] = {}
    for name in topics:
        groups.setdefault(root(name), []).append(name)
    return [sorted(g) for g in groups.values()]


@functools.lru_cache(maxsize=1)
def load_corpus() -> CharCorpus:
    """The pydoc topics split into training and validation text (cached)."""
    from pydoc_data.topics import topics

    groups = _topic_groups(dict(topics))
    groups.sort(key=lambda g: hashlib.sha256("\0".join(g).encode()).hexdigest())
    total = sum(len(text) for text in topics.values())
    valid: list[str] = []
    size = 0
    for group in groups:
        if size >= VALID_FRACTION * total:
            break
        valid.extend(group)
        size += sum(len(topics[name]) for name in group)
    train = sorted(set(topics) - set(valid))
    valid.sort()
    return CharCorpus(
        train_text=_SEPARATOR.join(topics[name] for name in train),
        valid_text=_SEPARATOR.join(topics[name] for name in valid),
        train_topics=tuple(train),
        valid_topics=tuple(valid),
        alphabet="".join(sorted(set("".join(topics.values())) | set(_SEPARATOR))),
    )


@functools.lru_cache(maxsize=2)
def encoded_corpus() -> tuple[Tensor, Tensor]:
    """``(train_ids, valid_ids)``: the two texts as int64 character ids (cached)."""
    corpus = load_corpus()
    return corpus.encode(corpus.train_text), corpus.encode(corpus.valid_text)


def char_batch(
    ids: Tensor, seq_len: int, batch: int, gen: torch.Generator
) -> tuple[Tensor, Tensor]:
    """Random windows: ``inputs (batch, seq_len)`` and next-character ``targets``."""
    if ids.numel() < seq_len + 2:
        raise ValueError(f"chars: text of {ids.numel()} characters is shorter than seq_len + 2")
    starts = torch.randint(0, ids.numel() - seq_len - 1, (batch,), generator=gen)
    windows = ids[starts[:, None] + torch.arange(seq_len + 1)]  # (B, N + 1)
    return windows[:, :-1], windows[:, 1:]


def eval_windows(ids: Tensor, seq_len: int, max_chars: int) -> tuple[Tensor, Tensor]:
    """Fixed evaluation windows: evenly spaced, non-overlapping, up to ``max_chars`` targets.

    Returns:
        ``inputs (W, seq_len)`` and ``targets (W, seq_len)``.
    """
    available = (ids.numel() - 1) // seq_len
    count = max(1, min(available, max_chars // seq_len))
    starts = torch.linspace(0, ids.numel() - seq_len - 1, count).long()
    windows = ids[starts[:, None] + torch.arange(seq_len + 1)]  # (W, N + 1)
    return windows[:, :-1], windows[:, 1:]


def bits_per_char(total_nats: float, count: int) -> float:
    """Mean cross-entropy in bits from a sum in nats over ``count`` characters."""
    return total_nats / (count * math.log(2))
