"""The ``realmodel`` config block (its defaults live here only)."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class RealmodelConfig:
    """Settings of a real-model point (conf/experiment/realmodel.yaml is the preset).

    Args:
        lengths: Token lengths of the texts ([CLS] and [SEP] included), each in [2, 512].
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
    repeats: int = 10
    retrieval_pairs: int = 200
    heatmap: bool = True
    heatmap_sentence: str = "The cat sat on the mat."
    heatmap_layer: int = 0
    heatmap_head: int = 0
    fit_path: str | None = None
