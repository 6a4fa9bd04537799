"""Private attention engines the public variants are built on, each beside its plain reference.

An engine computes one kind of attention fast; ``<engine>_naive.py`` beside it computes the same
thing in plain PyTorch (dense, float64-friendly, no fused kernels), and the engine's tests
compare the two. Engines are not variants: the registry does not list them.

* :mod:`.blocksparse`: query blocks with their own key slots through one fused SDPA call.
* :mod:`.band`: Longformer's sliding window over :mod:`.blocksparse`.
* :mod:`.flex`: compiled ``flex_attention`` with a block mask, and its cost.
* :mod:`.prefix`: causal kernel attention by streamed prefix sums (:mod:`.prefix_stream`,
  :mod:`.prefix_backward`), its cost models in :mod:`.prefix_costs`.
* :mod:`.decay`: linear attention with a fixed decay per head, chunk by chunk (retention).
* :mod:`.delta`: the (gated) delta rule in the chunked WY form (DeltaNet).
* :mod:`.fla_backend`: flash-linear-attention's CUDA kernels for the two above.
* Decode forms: :mod:`.kv_cache` (exact), :mod:`.ring_cache` (windows), :mod:`.prefix_decode`
  (running sums of the kernel family).
"""
