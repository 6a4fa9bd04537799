"""The training tasks' data: MQAR's generator and no-leak form, the character corpus's split."""

from __future__ import annotations

import pytest
import torch

from harness.tasks.train import data_chars
from harness.tasks.train.data_mqar import (
    IGNORE,
    PAD,
    MQARConfig,
    TaskConfigError,
    chance_accuracy,
    key_to_query_distances,
    mqar_batch,
    mqar_eval_set,
)

SETTINGS = [
    MQARConfig(vocab=64, seq_len=32, num_pairs=4),
    MQARConfig(vocab=256, seq_len=64, num_pairs=8, num_queries=5, form="bidirectional"),
]


def _batch(cfg: MQARConfig, batch: int = 128, seed: int = 0):
    return mqar_batch(cfg, batch, torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("cfg", SETTINGS, ids=["causal", "bidirectional"])
def test_keys_and_values_come_from_disjoint_halves_and_keys_are_distinct(cfg):
    inputs, _ = _batch(cfg)
    keys = inputs[:, 0 : 2 * cfg.num_pairs : 2]  # (B, P)
    values = inputs[:, 1 : 2 * cfg.num_pairs : 2]  # (B, P)
    half = cfg.vocab // 2
    assert bool(((keys >= 1) & (keys < half)).all()), "keys must be in 1 .. vocab/2 - 1"
    assert bool(((values >= half) & (values < cfg.vocab)).all()), "values: the upper half"
    for row in keys.tolist():
        assert len(set(row)) == cfg.num_pairs, f"repeated key in {row}"


@pytest.mark.parametrize("cfg", SETTINGS, ids=["causal", "bidirectional"])
def test_loss_positions_are_exactly_the_queries_and_targets_are_their_values(cfg):
    inputs, targets = _batch(cfg)
    context = 2 * cfg.num_pairs
    scored = targets != IGNORE
    assert not bool(scored[:, :context].any()), "no loss inside the key-value context"
    assert scored.sum(1).tolist() == [cfg.queries] * inputs.shape[0]
    for b in range(inputs.shape[0]):
        pairs = dict(zip(inputs[b, 0:context:2].tolist(), inputs[b, 1:context:2].tolist()))
        positions = scored[b].nonzero().squeeze(1).tolist()
        asked = [inputs[b, p].item() for p in positions]
        assert len(set(asked)) == len(asked), "a key is queried at most once"
        for p in positions:
            assert (p - context - cfg.lead) % 2 == 0, "queries sit at every other position"
            assert targets[b, p].item() == pairs[inputs[b, p].item()]


def test_eval_set_is_reproducible_from_its_seed_and_fresh_batches_differ():
    cfg = SETTINGS[0]
    first, again = mqar_eval_set(cfg, 512, seed=7), mqar_eval_set(cfg, 512, seed=7)
    assert first[0].shape == (512, cfg.seq_len)
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[0], mqar_eval_set(cfg, 512, seed=8)[0])
    gen = torch.Generator().manual_seed(0)
    assert not torch.equal(mqar_batch(cfg, 64, gen)[0], mqar_batch(cfg, 64, gen)[0])


def test_query_gaps_follow_the_power_law():
    cfg = MQARConfig(vocab=64, seq_len=64, num_pairs=4, num_queries=1, power_a=0.01)
    inputs, targets = _batch(cfg, batch=2000)
    offsets = (targets != IGNORE).nonzero()[:, 1] - 2 * cfg.num_pairs - cfg.lead
    counts = torch.bincount(offsets // 2, minlength=cfg.num_slots).float()
    # p(slot) ~ (slot + 1) ** -0.99: slot 0 twice as likely as slot 1, 27 times the last
    assert counts[0] > 1.5 * counts[1]
    assert counts[0] > 10 * counts[-1]
    uniform = MQARConfig(vocab=64, seq_len=64, num_pairs=4, num_queries=1, power_a=1.0)
    offsets = (_batch(uniform, 2000)[1] != IGNORE).nonzero()[:, 1] - 2 * uniform.num_pairs
    counts = torch.bincount(offsets // 2, minlength=uniform.num_slots).float()
    assert counts.max() < 2 * counts.min()


def test_bidirectional_form_leaks_nothing():
    cfg = SETTINGS[1]
    inputs, targets = _batch(cfg, batch=256)
    context = 2 * cfg.num_pairs
    region, region_targets = inputs[:, context:], targets[:, context:]
    scored = region_targets != IGNORE
    # the query region holds the query keys and padding only: no value token anywhere
    assert bool((region[scored] < cfg.vocab // 2).all())
    assert bool((region[~scored] == PAD).all())
    for b, p in (targets != IGNORE).nonzero().tolist():
        answer = targets[b, p].item()
        where = (inputs[b] == answer).nonzero().squeeze(1).tolist()
        assert len(where) == 1 and where[0] < context, "the answer is only in the context"
    # a model that copies a neighbour of the query (either side) scores at chance (here: 0)
    rows, cols = (targets != IGNORE).nonzero(as_tuple=True)
    for shift in (-1, 1):
        guess = inputs[rows, (cols + shift).clamp(max=cfg.seq_len - 1)]
        accuracy = (guess == targets[rows, cols]).float().mean().item()
        assert accuracy <= chance_accuracy(cfg)


def test_key_to_query_distances_are_measured_from_the_key():
    cfg = SETTINGS[0]
    inputs, targets = _batch(cfg, batch=64)
    distances = key_to_query_distances(inputs, targets, cfg.num_pairs)
    rows, cols = (targets != IGNORE).nonzero(as_tuple=True)
    assert bool((inputs[rows, cols - distances] == inputs[rows, cols]).all())
    assert bool((distances >= 2).all())


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"vocab": 63}, "vocab"),
        ({"num_pairs": 40}, "num_pairs"),
        ({"seq_len": 16, "num_pairs": 6}, "seq_len"),
        ({"num_queries": 9}, "num_queries"),
        ({"power_a": 0.0}, "power_a"),
        ({"form": "sideways"}, "form"),
    ],
)
def test_bad_settings_name_the_field(kwargs, field):
    with pytest.raises(TaskConfigError, match=field):
        MQARConfig(**({"vocab": 64, "seq_len": 32, "num_pairs": 4} | kwargs))


def test_character_validation_text_never_appears_in_training():
    corpus = data_chars.load_corpus()
    assert corpus.valid_topics and corpus.train_topics
    assert not set(corpus.valid_topics) & set(corpus.train_topics)
    assert 0.08 < len(corpus.valid_text) / (len(corpus.valid_text) + len(corpus.train_text))
    from pydoc_data.topics import topics

    for name in corpus.valid_topics:
        assert topics[name] not in corpus.train_text, name
    # no passage of 300 characters is shared: every 200-character window of the validation
    # text at stride 100 is looked up at every offset of the training text
    width = 200
    windows = {corpus.valid_text[i : i + width] for i in range(0, len(corpus.valid_text), 100)}
    train = corpus.train_text
    shared = [i for i in range(len(train) - width) if train[i : i + width] in windows]
    assert not shared, f"validation passages in training at offsets {shared[:3]}"


def test_character_batches_come_from_training_text_and_eval_from_validation():
    train_ids, valid_ids = data_chars.encoded_corpus()
    inputs, targets = data_chars.char_batch(train_ids, 64, 8, torch.Generator().manual_seed(0))
    assert inputs.shape == targets.shape == (8, 64)
    assert torch.equal(inputs[:, 1:], targets[:, :-1]), "targets are the next characters"
    ev_inputs, ev_targets = data_chars.eval_windows(valid_ids, 256, 4096)
    assert ev_inputs.shape == (16, 256)
    text = "".join(data_chars.load_corpus().alphabet[i] for i in ev_inputs[3].tolist())
    assert text in data_chars.load_corpus().valid_text
