"""Sanity of the training experiment: exact attention learns MQAR, a narrow window cannot.

The setting is the smallest one calibrated to be learnt in seconds (2-core CPU, one thread):
length 32, width 32, vocabulary 64, 4 pairs, batch 32, lr 3e-3. Exact attention left the
"any value of the context" plateau (accuracy 1/4) by step 350 for each of 5 seeds and stops
early at 0.95; the budget of 800 steps leaves room. Both models get the same budget.
"""

from __future__ import annotations

import variants
from harness.tasks.train.data_mqar import MQARConfig, key_to_query_distances, mqar_eval_set
from harness.tasks.train.measure import measure, train_point

N, HEAD_DIM, WINDOW = 32, 32, 2
TRAIN = {
    "task": "mqar",
    "lr": 3e-3,
    "steps": 800,
    "batch": 32,
    "eval_every": 25,
    "warmup": 20,
    "target": 0.95,
    "mqar": {"vocab": 64, "num_pairs": 4, "eval_examples": 512},
}


def _train(name: str, **params) -> dict:
    factory = lambda seed: variants.create(name, kv_len=N, head_dim=HEAD_DIM, **params)
    (row,) = measure(train_point(name, N, HEAD_DIM, TRAIN, params=params), factory, None)
    assert row["status"] == "ok", row["reason"]
    return row


def test_exact_attention_learns_mqar_and_a_narrow_window_does_not(one_thread):
    exact = _train("sdpa")
    assert exact["final_accuracy"] >= 0.9, exact["curve"]
    assert exact["steps_to_90"] is not None and exact["steps_to_90"] <= exact["steps_run"]
    # the row is self-describing: contract columns, curve, costs
    assert exact["exact"] is True and exact["randomized"] is False
    assert isinstance(exact["params"], dict) and exact["params"]["kv_len"] == N
    assert exact["curve"][0][0] == 0 and exact["curve"][-1] == [
        exact["steps_run"],
        exact["final_eval"],
    ]
    assert exact["time_ms"] > 0 and exact["peak_mem_bytes"] > 0
    assert exact["n_params"] > exact["n_attention_params"] > 0 == exact["n_variant_params"]

    # Most queries sit further from their key than two layers of a causal window can reach
    # (the answer is one token after the key: it needs distance - 1 <= 2 * window).
    cfg = MQARConfig(vocab=64, seq_len=N, num_pairs=4)
    inputs, targets = mqar_eval_set(cfg, 512)
    unreachable = (key_to_query_distances(inputs, targets, 4) - 1 > 2 * WINDOW).float().mean()
    assert unreachable > 0.6
    local = _train("local", window=WINDOW)
    assert local["knob"] == "window" and local["knob_value"] == WINDOW
    assert local["steps_run"] == TRAIN["steps"], "the window never reaches the target"
    assert local["best_accuracy"] < 0.5
    assert local["best_accuracy"] < exact["final_accuracy"] - 0.4
