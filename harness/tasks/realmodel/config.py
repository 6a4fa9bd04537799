"""The ``realmodel`` config block (its defaults live here only)."""

from __future__ import annotations

import dataclasses

from harness.measure.config import ConfigError, check_integer, check_positive
from harness.minilm.limits import MAX_TOKENS, MIN_PAIRED_REPEATS, MIN_PAIRS, NUM_HEADS, NUM_LAYERS


def _check_text(field: str, value: object) -> None:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"realmodel.{field}={value!r} must be a non-empty text")


@dataclasses.dataclass
class RealmodelConfig:
    """Settings of a real-model point (conf/experiment/realmodel.yaml is the preset).

    Args:
        lengths: Token lengths of the texts ([CLS] and [SEP] included), each in [2, 512];
            kept sorted, each once.
        texts_per_length: Distinct pydoc passages per length.
        batch_size: Texts per forward pass (mixed lengths, right-padded).
        repeats: Timed (exact, variant) rounds after one warm-up round (>= 10).
        retrieval_pairs: Pydoc pairs of the retrieval check (>= 200); 0 turns it off.
        heatmap: Write heatmap.json (exact and the variant's matrix) beside the rows.
        heatmap_sentence: The heatmap's text.
        heatmap_layer: MiniLM layer of the heatmap, 0..5.
        heatmap_head: MiniLM head of the heatmap, 0..11.
        fit_path: A saved transfer fit to measure instead of the untrained variant.
    """

    lengths: list[int] = dataclasses.field(default_factory=lambda: [64, 128, 256, 512])
    texts_per_length: int = 4
    batch_size: int = 4
    repeats: int = MIN_PAIRED_REPEATS
    retrieval_pairs: int = MIN_PAIRS
    heatmap: bool = True
    heatmap_sentence: str = "The cat sat on the mat."
    heatmap_layer: int = 0
    heatmap_head: int = 0
    fit_path: str | None = None

    def __post_init__(self) -> None:
        if not self.lengths:
            raise ConfigError("realmodel.lengths=[] must name at least one length")
        for n in self.lengths:
            check_integer("realmodel.lengths", n, 2, MAX_TOKENS)
        self.lengths = sorted(set(self.lengths))
        check_positive("realmodel.texts_per_length", self.texts_per_length, integer=True)
        check_positive("realmodel.batch_size", self.batch_size, integer=True)
        check_integer("realmodel.repeats", self.repeats, MIN_PAIRED_REPEATS)
        check_integer("realmodel.retrieval_pairs", self.retrieval_pairs, 0)
        if 0 < self.retrieval_pairs < MIN_PAIRS:
            # fewer pairs cannot separate variants: at 32, three discordant queries are p = 0.25
            raise ConfigError(
                f"realmodel.retrieval_pairs={self.retrieval_pairs} must be 0 (off) or >= "
                f"{MIN_PAIRS}"
            )
        if not isinstance(self.heatmap, bool):
            raise ConfigError(f"realmodel.heatmap={self.heatmap!r} must be true or false")
        _check_text("heatmap_sentence", self.heatmap_sentence)
        layer, head = self.heatmap_layer, self.heatmap_head
        check_integer("realmodel.heatmap_layer", layer, 0, NUM_LAYERS - 1)
        check_integer("realmodel.heatmap_head", head, 0, NUM_HEADS - 1)
        if self.fit_path is not None and not (isinstance(self.fit_path, str) and self.fit_path):
            raise ConfigError(f"realmodel.fit_path={self.fit_path!r} must be a file path or null")
