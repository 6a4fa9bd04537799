"""Multi-query associative recall (MQAR; Arora et al. 2023, "Zoology"), generated on the fly.

An example of length ``seq_len`` with ``num_pairs`` pairs and ``num_queries`` queries::

    k1 v1 k2 v2 ... kP vP | f f k3 f f f k1 f ... f      (inputs)
    .  .  .  .  ... .  .  | . . v3 . . . v1 . ... .      (targets; "." = IGNORE)

The context holds key-value pairs; the query region that follows holds ``num_queries`` of the
keys, each at offset ``2 * slot`` (plus one lead pad in the bidirectional form), and the target
at a query's position is its key's value (the next token a causal model should produce). Slots
are drawn without replacement with
probability proportional to ``(slot + 1) ** (power_a - 1)``: a power law over the key-to-query
gap, as in Zoology (``power_a = 0.01`` favours short gaps; 1.0 is uniform). Keys come from
``1 .. vocab/2 - 1`` and values from ``vocab/2 .. vocab - 1`` (disjoint halves; token 0 is the
padding token), and the keys (and values) of one example are distinct. Loss and accuracy are
taken on the query positions only.

Two forms:

* ``causal``: the filler tokens ``f`` are random tokens of the whole vocabulary, as Zoology's
  ``random_non_queries``; the model runs with causal attention.
* ``bidirectional``: the filler is the padding token 0 and the query region starts with one
  padding token (queries at odd offsets), so the query region holds the query keys only and
  every neighbour of a query is padding (without the lead pad, a query in slot 0 for the last
  key would sit right after its answer); every position may attend everywhere. The answer to a
  query occurs in the input exactly once, right after its key in the context.

Training draws fresh examples every step (:func:`mqar_batch` with a stepping generator); the
evaluation set is fixed by its own seed (:func:`mqar_eval_set`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from variants.base import check_int

#: Target value of positions that carry no loss (``torch.nn.functional.cross_entropy`` default).
IGNORE = -100
PAD = 0
FORMS = ("causal", "bidirectional")


class TaskConfigError(ValueError):
    """A task parameter outside its allowed range (the message names the field)."""


@dataclass(frozen=True)
class MQARConfig:
    """Parameters of one MQAR setting.

    Args:
        vocab: Vocabulary size (even, >= 4); keys are the lower half, values the upper half.
        seq_len: Tokens per example.
        num_pairs: Key-value pairs in the context.
        num_queries: Keys queried (<= num_pairs); ``None`` means every key once.
        power_a: Exponent of the power law over query slots (0 < power_a <= 1).
        form: ``causal`` or ``bidirectional`` (see the module docstring).
    """

    vocab: int = 256
    seq_len: int = 64
    num_pairs: int = 4
    num_queries: int | None = None
    power_a: float = 0.01
    form: str = "causal"

    def __post_init__(self) -> None:
        owner, err = "mqar", TaskConfigError
        check_int(owner, "vocab", self.vocab, low=4, error=err)
        check_int(owner, "seq_len", self.seq_len, low=2, error=err)
        check_int(owner, "num_pairs", self.num_pairs, low=1, error=err)
        if self.vocab % 2:
            raise err(f"mqar: vocab={self.vocab} must be even (keys and values split it)")
        if self.num_pairs > self.vocab // 2 - 1:
            raise err(
                f"mqar: num_pairs={self.num_pairs} exceeds the {self.vocab // 2 - 1} distinct "
                f"keys of vocab={self.vocab} (allowed: 1..{self.vocab // 2 - 1})"
            )
        if self.num_queries is not None:
            check_int(owner, "num_queries", self.num_queries, 1, self.num_pairs, error=err)
        if self.form not in FORMS:
            raise err(f"mqar: form={self.form!r} is not one of {', '.join(FORMS)}")
        slots = self.num_slots
        if slots < self.queries:
            raise err(
                f"mqar: seq_len={self.seq_len} leaves {max(0, slots)} query slots after "
                f"num_pairs={self.num_pairs}; need >= {self.queries} (allowed: seq_len >= "
                f"{2 * self.num_pairs + self.lead + 2 * self.queries})"
            )
        if not (isinstance(self.power_a, (int, float)) and 0 < self.power_a <= 1):
            raise err(f"mqar: power_a={self.power_a!r} must be a number in (0, 1]")

    @property
    def queries(self) -> int:
        """Queries per example."""
        return self.num_pairs if self.num_queries is None else self.num_queries

    @property
    def lead(self) -> int:
        """Padding tokens between the context and the first query slot."""
        return 0 if self.form == "causal" else 1

    @property
    def num_slots(self) -> int:
        """Positions of the query region a query may occupy (every other one)."""
        return (self.seq_len - 2 * self.num_pairs - self.lead) // 2

    @property
    def causal(self) -> bool:
        """Whether the model runs with causal attention on this form."""
        return self.form == "causal"


def slot_probabilities(num_slots: int, power_a: float) -> Tensor:
    """Power law ``p(slot) ~ (slot + 1) ** (power_a - 1)`` over ``num_slots`` slots (sums to 1)."""
    p = torch.arange(1, num_slots + 1, dtype=torch.float64) ** (power_a - 1)
    return p / p.sum()


def _distinct(batch: int, low: int, high: int, count: int, gen: torch.Generator) -> Tensor:
    """``(batch, count)`` tokens from ``low .. high - 1``, distinct within each row."""
    scores = torch.rand(batch, high - low, generator=gen)
    return scores.topk(count, dim=1).indices + low  # a random subset per row


def mqar_batch(cfg: MQARConfig, batch: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """One batch of fresh MQAR examples.

    Args:
        cfg: The setting.
        batch: Examples.
        gen: CPU generator; the batch is a deterministic function of its state.

    Returns:
        ``inputs (batch, seq_len)`` int64 and ``targets (batch, seq_len)`` int64, where targets
        are :data:`IGNORE` except at the query positions.
    """
    pairs, queries, half = cfg.num_pairs, cfg.queries, cfg.vocab // 2
    keys = _distinct(batch, 1, half, pairs, gen)  # (B, P), 0 is the padding token
    values = _distinct(batch, half, cfg.vocab, pairs, gen)  # (B, P)
    context = torch.stack([keys, values], dim=2).reshape(batch, 2 * pairs)  # (B, 2P) k v k v
    region = cfg.seq_len - 2 * pairs
    if cfg.form == "causal":
        filler = torch.randint(0, cfg.vocab, (batch, region), generator=gen)
    else:
        filler = torch.full((batch, region), PAD, dtype=torch.long)
    # Slots without replacement from the power law: the top-q of log p + Gumbel noise.
    log_p = slot_probabilities(cfg.num_slots, cfg.power_a).log().float()
    uniform = torch.rand(batch, cfg.num_slots, generator=gen).clamp_min(1e-12)
    slots = (log_p - (-uniform.log()).log()).topk(queries, dim=1).indices  # (B, Q)
    asked = torch.rand(batch, pairs, generator=gen).argsort(dim=1)[:, :queries]  # (B, Q)
    offsets = cfg.lead + 2 * slots  # (B, Q) positions within the query region
    filler.scatter_(1, offsets, keys.gather(1, asked))
    inputs = torch.cat([context, filler], dim=1)  # (B, N)
    targets = torch.full_like(inputs, IGNORE)
    targets.scatter_(1, offsets + 2 * pairs, values.gather(1, asked))
    return inputs, targets


def mqar_eval_set(
    cfg: MQARConfig, examples: int = 512, seed: int = 12345, batch: int = 256
) -> tuple[Tensor, Tensor]:
    """The fixed evaluation set: ``examples`` examples from ``seed`` (same seed, same set).

    Generated in chunks of ``batch`` so that the set does not depend on how it is consumed.
    """
    check_int("mqar", "eval_examples", examples, low=1, error=TaskConfigError)
    gen = torch.Generator().manual_seed(seed)
    chunks = [mqar_batch(cfg, min(batch, examples - i), gen) for i in range(0, examples, batch)]
    return torch.cat([c[0] for c in chunks]), torch.cat([c[1] for c in chunks])


def recall_accuracy(logits: Tensor, targets: Tensor) -> tuple[int, int]:
    """``(correct, total)`` argmax predictions over the query positions.

    Args:
        logits: ``(B, N, vocab)``.
        targets: ``(B, N)`` with :data:`IGNORE` where no answer is expected.
    """
    mask = targets != IGNORE
    correct = (logits.argmax(-1) == targets) & mask
    return int(correct.sum()), int(mask.sum())


def chance_accuracy(cfg: MQARConfig) -> float:
    """Accuracy of guessing uniformly among the values: ``1 / (vocab / 2)``."""
    return 1.0 / (cfg.vocab // 2)


def plateau_accuracy(cfg: MQARConfig) -> float:
    """Accuracy of answering any value of the example: ``1 / num_pairs``.

    A model that has learnt which tokens are values but not which key they belong to sits
    here (linear attention and small states often stay on it); chance over the whole value
    half of the vocabulary (:func:`chance_accuracy`) is far below.
    """
    return 1.0 / cfg.num_pairs


def key_to_query_distances(inputs: Tensor, targets: Tensor, num_pairs: int) -> Tensor:
    """Distances from each query position back to its key's position in the context (flat)."""
    rows, cols = (targets != IGNORE).nonzero(as_tuple=True)
    context_keys = inputs[:, 0 : 2 * num_pairs : 2]  # (B, P)
    match = context_keys[rows] == inputs[rows, cols].unsqueeze(1)  # (M, P)
    return cols - 2 * match.float().argmax(dim=1)
