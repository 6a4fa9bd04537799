"""Retention and DeltaNet as variants: against float64 references (the parallel form of
retention with the paper's normalisations, the token-by-token delta rule), gradients of the
inputs and of their own parameters, the causal-only refusals, grouped heads, decoding, the
per-head parameters built before an optimiser, and the one-line config errors. The engines
themselves are tested in test_engine_recurrent.py; the conformance kit runs over both in
test_conformance.py."""

import math

import pytest
import torch
import torch.nn.functional as F
from helpers import assert_close

import variants
from harness.conformance import make_qkv
from variants.base import VariantConfigError
from variants.engines import delta_naive
from variants.grouped import repeat_kv
from variants.retention import log_decays, retnet_exponents

pytestmark = pytest.mark.usefixtures("one_thread")


def retention_parallel(q, k, v, log_gamma, scale, normalize):
    """RetNet's parallel form (section 2.2), float64, quadratic."""
    n = q.shape[-2]
    i = torch.arange(n, dtype=q.dtype).unsqueeze(1)
    j = torch.arange(n, dtype=q.dtype).unsqueeze(0)
    lg = log_gamma.view(-1, 1, 1)
    decay = torch.where(j <= i, torch.exp((i - j) * lg), torch.zeros((), dtype=q.dtype))
    if normalize:
        decay = decay / decay.sum(dim=-1, keepdim=True).sqrt()
    scores = (q * scale) @ k.transpose(-2, -1) * decay  # (B, H, n, n)
    if normalize:
        scores = scores / scores.sum(dim=-1, keepdim=True).abs().clamp_min(1.0)
    return scores @ v


def deltanet_reference(module, q, k, v):
    """The variant's delta rule, token by token in float64 (beta and the gate from the raw
    keys, normalised q and k)."""
    params = [p.detach().double() for p in module.per_head(q)]
    beta = torch.sigmoid(torch.einsum("bhnd,hd->bhn", k, params[0]) + params[1][:, None])
    log_alpha = None
    if module.gate == "learned":
        log_alpha = F.logsigmoid(torch.einsum("bhnd,hd->bhn", k, params[2]) + params[3][:, None])
    qn = F.normalize(q, dim=-1) / math.sqrt(q.shape[-1])
    out, _ = delta_naive.delta_rule(qn, F.normalize(k, dim=-1), v, beta, log_alpha)
    return out


def _randomise(module, seed=0):
    """Nonzero per-head parameters, so the test sees them act."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.5 * torch.randn(p.shape, generator=gen))
    return module


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("chunk", [1, 7, 64])
@pytest.mark.parametrize("n", [1, 45, 130])
def test_retention_equals_its_parallel_form(n, chunk, normalize):
    q, k, v = make_qkv((2, 3, n, n, 8), seed=n, dtype=torch.float64)
    module = variants.create("retention", chunk_size=chunk, normalize=normalize)
    log_gamma = log_decays(retnet_exponents(3, None))
    ref = retention_parallel(q, k, v, log_gamma, 8**-0.5, normalize)
    assert_close(module(q, k, v, causal=True), ref, rtol=1e-10, atol=1e-12)


def test_retention_decays_are_retnets_and_the_range_spreads_them():
    gammas = torch.exp(log_decays(retnet_exponents(4, None)))
    assert_close(
        gammas, 1 - 2.0 ** -torch.arange(5.0, 9.0, dtype=torch.float64), rtol=1e-14, atol=0
    )
    spread = torch.exp(log_decays(retnet_exponents(3, (2.0, 10.0))))
    assert_close(
        spread, 1 - 2.0 ** -torch.tensor([2.0, 6.0, 10.0], dtype=torch.float64), rtol=1e-14, atol=0
    )
    q, k, v = make_qkv((1, 3, 30, 30, 8), seed=1, dtype=torch.float64)
    module = variants.create("retention", decay_range=[2, 10])
    ref = retention_parallel(q, k, v, torch.log(spread), 8**-0.5, True)
    assert_close(module(q, k, v, causal=True), ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("gate", ["none", "learned"])
@pytest.mark.parametrize("chunk", [1, 16, 64])
@pytest.mark.parametrize("n", [1, 37, 150])
def test_deltanet_equals_the_token_by_token_rule(n, chunk, gate):
    q, k, v = make_qkv((2, 3, n, n, 8), seed=n, dtype=torch.float64)
    module = _randomise(
        variants.create("deltanet", heads=3, head_dim=8, gate=gate, chunk_size=chunk)
    )
    assert_close(
        module(q, k, v, causal=True), deltanet_reference(module, q, k, v), rtol=1e-9, atol=1e-12
    )


def test_deltanet_starts_at_half_strength_and_gated_at_retnets_decay():
    module = variants.create("deltanet", heads=2, head_dim=4, gate="learned")
    k = torch.randn(1, 2, 5, 4)
    beta, log_alpha = module.write_strengths(k)
    assert_close(beta, torch.full_like(beta, 0.5), rtol=0, atol=0)
    want = torch.log(1 - 2.0 ** -torch.tensor([5.0, 6.0])).view(1, 2, 1).expand_as(log_alpha)
    assert_close(log_alpha, want, rtol=1e-5, atol=0)


@pytest.mark.parametrize(
    "name, params", [("retention", {"learn_decay": True}), ("deltanet", {"gate": "learned"})]
)
def test_gradients_match_the_reference_and_reach_the_own_parameters(name, params):
    q, k, v = make_qkv((1, 2, 40, 40, 8), seed=3, dtype=torch.float64, requires_grad=True)
    module = _randomise(variants.create(name, heads=2, head_dim=8, chunk_size=16, **params))
    module.double()
    weights = torch.randn(1, 2, 40, 8, dtype=torch.float64)
    (module(q, k, v, causal=True) * weights).sum().backward()
    grads = [t.grad.clone() for t in (q, k, v)] + [p.grad.clone() for p in module.parameters()]
    for t in (q, k, v, *module.parameters()):
        t.grad = None
    if name == "retention":
        ref = retention_parallel(q, k, v, -torch.exp(module.decay), 8**-0.5, True)
    else:
        ref = deltanet_reference_differentiable(module, q, k, v)
    (ref * weights).sum().backward()
    want = [t.grad for t in (q, k, v)] + [p.grad for p in module.parameters()]
    for got, ref_grad in zip(grads, want, strict=True):
        assert ref_grad.abs().max() > 0  # every parameter takes part
        assert_close(got, ref_grad, rtol=1e-8, atol=1e-10)


def deltanet_reference_differentiable(module, q, k, v):
    """:func:`deltanet_reference` keeping the graph to the per-head parameters."""
    params = module.per_head(q)
    beta = torch.sigmoid(torch.einsum("bhnd,hd->bhn", k, params[0]) + params[1][:, None])
    log_alpha = F.logsigmoid(torch.einsum("bhnd,hd->bhn", k, params[2]) + params[3][:, None])
    qn = F.normalize(q, dim=-1) / math.sqrt(q.shape[-1])
    return delta_naive.delta_rule(qn, F.normalize(k, dim=-1), v, beta, log_alpha)[0]


@pytest.mark.parametrize("name", ["retention", "deltanet"])
def test_causal_only_points_are_refused_with_the_reason(name):
    module = variants.create(name)
    q, k, v = make_qkv((1, 2, 16, 16, 8), seed=0)
    (reason,) = module.not_supported_reasons(q, k, v, causal=False)
    assert (
        "bidirectional attention is not supported" in reason and "causal by construction" in reason
    )
    with pytest.raises(ValueError, match="bidirectional"):
        module(q, k, v, causal=False)
    q2, k2, v2 = make_qkv((1, 2, 8, 16, 8), seed=0)
    assert any("cross-attention" in r for r in module.not_supported_reasons(q2, k2, v2, True))
    assert not module.approximates_softmax and not module.exact


@pytest.mark.parametrize("name", ["retention", "deltanet"])
def test_grouped_heads_equal_repeated_keys(name):
    q, k, v = make_qkv((2, 4, 30, 30, 8), seed=5, dtype=torch.float64, kv_heads=2)
    module = variants.create(name, chunk_size=8)
    grouped = module(q, k, v, causal=True)
    assert_close(
        grouped, module(q, repeat_kv(k, 2), repeat_kv(v, 2), causal=True), rtol=1e-12, atol=1e-14
    )


@pytest.mark.parametrize("tokens", [1, 3])
@pytest.mark.parametrize("name, params", [("retention", {}), ("deltanet", {"gate": "learned"})])
def test_prefill_and_steps_equal_the_causal_forward(name, params, tokens):
    q, k, v = make_qkv((1, 4, 41, 41, 8), seed=7, dtype=torch.float64, kv_heads=2)
    module = _randomise(variants.create(name, heads=4, head_dim=8, chunk_size=8, **params))
    module.double()
    with torch.no_grad():
        whole = module(q, k, v, causal=True)
        out, state = module.prefill(q[:, :, :13], k[:, :, :13], v[:, :, :13])
        outs = [out]
        for start in range(13, 41, tokens):
            part = slice(start, start + tokens)
            out, state = module.step(q[:, :, part], k[:, :, part], v[:, :, part], state)
            outs.append(out)
    assert_close(torch.cat(outs, dim=-2), whole, rtol=1e-10, atol=1e-12)
    assert state.length == 41
    before = state.nbytes()
    module.step(*(t[:, :, :1] for t in (q, k, v)), state)
    assert state.nbytes() == before  # the state does not grow with the context
    assert before == module.state_bytes(1, 2, 41, 8, element_size=8, heads=4)


@pytest.mark.parametrize("name", ["retention", "deltanet", "hedgehog"])
def test_per_head_parameters_exist_before_the_optimiser(name):
    from harness.tasks.train.model import ModelConfig, TinyTransformer

    params = {"learn_decay": True} if name == "retention" else {}
    model = TinyTransformer(
        ModelConfig(16, 8, 8, 2, 1, 0), lambda _: variants.create(name, **params)
    )
    own = list(model.variants()[0].parameters())
    assert own and all(p.shape[0] == 2 for p in own)  # built for the model's 2 heads
    names = {id(p) for p in model.parameters()}
    assert all(id(p) in names for p in own)


@pytest.mark.parametrize(
    "name, params, field",
    [
        ("retention", {"decay_range": [5]}, "decay_range"),
        ("retention", {"decay_range": [9, 5]}, "decay_range"),
        ("retention", {"normalize": "yes"}, "normalize"),
        ("retention", {"chunk_size": 0}, "chunk_size"),
        ("deltanet", {"gate": "mamba"}, "gate"),
        ("deltanet", {"chunk_size": -1}, "chunk_size"),
        ("deltanet", {"heads": 0}, "heads"),
    ],
)
def test_bad_parameters_name_the_field(name, params, field):
    with pytest.raises(VariantConfigError, match=f"{name}: {field}"):
        variants.create(name, **params)


def test_parameters_built_for_other_heads_are_refused():
    module = variants.create("deltanet", heads=2, head_dim=8)
    q, k, v = make_qkv((1, 3, 8, 8, 8), seed=0)
    assert any("built for heads=2" in r for r in module.not_supported_reasons(q, k, v, True))


def test_a_saved_fit_loads_into_an_unbuilt_instance():
    fitted = _randomise(variants.create("deltanet", heads=2, head_dim=8, gate="learned"))
    fresh = variants.create("deltanet", gate="learned")
    fresh.load_state_dict(fitted.state_dict())
    q, k, v = make_qkv((1, 2, 20, 20, 8), seed=0)
    assert_close(fresh(q, k, v, causal=True), fitted(q, k, v, causal=True), rtol=0, atol=0)


@pytest.mark.parametrize("name", ["retention", "deltanet"])
def test_backends_resolve_to_the_suites_engine_off_cuda_and_refuse_fla(name):
    q, k, v = make_qkv((1, 2, 16, 16, 8), seed=0)
    auto = variants.create(name)
    assert auto.config()["resolved_backend"] is None  # nothing asked yet
    auto(q, k, v, causal=True)
    assert auto.config()["resolved_backend"] == "torch"
    (reason,) = variants.create(name, backend="fla").not_supported_reasons(q, k, v, True)
    assert reason.startswith(f"{name}: backend=fla: fla's kernels are CUDA only")
    with pytest.raises(VariantConfigError, match=f"{name}: backend"):
        variants.create(name, backend="triton")


@pytest.mark.parametrize("shape", [(1, 4, 1024, 1024, 32), (2, 2, 300, 300, 16)])
@pytest.mark.parametrize(
    "name, params",
    [("retention", {}), ("retention", {"normalize": False}), ("deltanet", {"gate": "learned"})],
)
def test_memory_models_bound_the_measured_peaks(name, params, shape):
    """The models are upper bounds (the harness refuses points above its budget with them)
    and no looser than 2.5x, forward and backward (the inputs' gradients are the harness's)."""
    from harness.measure import memory, timing

    module = variants.create(name, **params)
    q, k, v = make_qkv(shape, seed=0)
    models = {
        "fwd": module.analytic_mem_bytes(*shape, True),
        "fwd_bwd": module.backward_mem_bytes(*shape, True) + 3 * q.numel() * 4,
    }
    for pass_name, model in models.items():
        fn = timing.pass_callable(pass_name, module, q, k, v, True, torch.randn_like(q))
        fn()  # warm-up, as the harness does
        peak = memory.peak_memory(fn, "cpu")["peak_mem_bytes"]
        assert peak <= model <= 2.5 * peak, (pass_name, peak, model)


def test_short_convolutions_are_causal_and_recorded():
    from variants.mha import MultiHeadAttention

    torch.manual_seed(0)
    layer = MultiHeadAttention(8, 2, "sdpa", short_conv=4)
    x = torch.randn(1, 12, 8)
    y = x.clone()
    y[:, 7:] += 1.0  # the future changes
    with torch.no_grad():
        assert torch.equal(layer(x, causal=True)[:, :7], layer(y, causal=True)[:, :7])
    assert len(layer.convs) == 3 and not MultiHeadAttention(8, 2, "sdpa").convs
    with pytest.raises(ValueError, match="short_conv"):
        MultiHeadAttention(8, 2, "sdpa", short_conv=-1)


def test_short_conv_is_a_checked_train_field_and_reaches_the_model():
    from harness.measure.config import ConfigError
    from harness.tasks.train.config import TrainConfig
    from harness.tasks.train.model import ModelConfig, TinyTransformer

    with pytest.raises(ConfigError, match="train.short_conv"):
        TrainConfig(short_conv=-2)
    model = TinyTransformer(ModelConfig(16, 8, 8, 2, 1, 0, 3), lambda _: variants.create("sdpa"))
    assert all(block.attn.short_conv == 3 for block in model.blocks)


def test_the_variant_list_names_them_own_operators_and_causal_only(capsys):
    from harness.app.list_variants import cli

    assert cli([]) in (0, None)
    lines = {ln.split()[0]: ln for ln in capsys.readouterr().out.splitlines() if ln.strip()}
    for name in ("retention", "deltanet"):
        assert "own operator (not softmax), causal only" in lines[name]
    assert "approximate, causal, cross" in lines["linear"]
