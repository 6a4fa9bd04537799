"""The conformance kit over every registered variant (built-ins and installed plugins), and the
interface they share: the abstract methods, ``kv_len``, the tolerances per dtype; the kit's
grouped-heads and decode checks fail on a variant that gets them wrong."""

import functools
import warnings

import pytest
import torch

import variants
from harness.conformance import CHECKS, check_exact_matches_reference
from harness.conformance_decode import check_decode, check_grouped_heads
from variants.base import AttentionVariant
from variants.engines.prefix_costs import CHUNKS, GROUPS
from variants.full import FullAttention
from variants.hedgehog import HedgehogAttention
from variants.linear import LinearAttention
from variants.linformer import LinformerAttention
from variants.longformer import LocalAttention, LongformerAttention
from variants.performer import PerformerAttention


@pytest.mark.parametrize("check", list(CHECKS))
@pytest.mark.parametrize("name", variants.available())
def test_conformance(name: str, check: str) -> None:
    CHECKS[check](name)


#: Options the registry's defaults do not reach, each run through the whole kit.
OPTIONS = {
    "linformer_mean_pool": functools.partial(LinformerAttention, k=16, init="mean_pool"),
    "linformer_learned": functools.partial(LinformerAttention, k=16, init="learned"),
    "performer_eps": functools.partial(PerformerAttention, nb_features=32, eps=1e-4),
    "performer_learnable_projection": functools.partial(
        PerformerAttention, nb_features=32, learnable_projection=True
    ),
    "longformer_dense_mask": functools.partial(
        LongformerAttention, window=8, backend="dense_mask"
    ),
    "longformer_chunked": functools.partial(LongformerAttention, window=8, backend="chunked"),
    "longformer_globals": functools.partial(LongformerAttention, window=5, num_global=3),
    "local_window": functools.partial(LocalAttention, window=3),
    "performer_relu": functools.partial(PerformerAttention, nb_features=32, kernel="relu"),
}
# Every value the engine tuner may pick (variants.tuning), set by hand: the causal prefix sums'
# chunks and groups, and Longformer's blockings (each forward and backward candidate once).
for _chunk in CHUNKS:
    OPTIONS[f"linear_chunk_{_chunk}"] = functools.partial(LinearAttention, chunk_size=_chunk)
    OPTIONS[f"performer_chunk_{_chunk}"] = functools.partial(
        PerformerAttention, nb_features=32, chunk_size=_chunk
    )
    OPTIONS[f"hedgehog_chunk_{_chunk}"] = functools.partial(HedgehogAttention, chunk_size=_chunk)
for _group in GROUPS:
    OPTIONS[f"linear_group_{_group}"] = functools.partial(LinearAttention, group_elements=_group)
_forward, _backward = LongformerAttention(window=8).band_knobs(8, fused=True)
for _fb, _b in zip(_forward.candidates, _backward.candidates[::-1]):
    OPTIONS[f"longformer_blocks_{_fb}_{_b}"] = functools.partial(
        LongformerAttention, window=8, backend="chunked", forward_block_size=_fb, block_size=_b
    )


@pytest.mark.parametrize("check", list(CHECKS))
@pytest.mark.parametrize("option", list(OPTIONS))
def test_conformance_of_options(option: str, check: str) -> None:
    CHECKS[check](OPTIONS[option])


@pytest.mark.parametrize("name", variants.builtin_names())
def test_kv_len_is_the_length_parameter(name: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # building for a length warns about nothing
        module = variants.create(name, kv_len=64, head_dim=16)
    assert module.kv_len == 64
    assert module.config()["kv_len"] == 64 and "seq_len" not in module.config()


class _TinyPlugin(AttentionVariant):
    """A minimal variant: both abstract methods implemented, nothing else."""

    name = "tiny_plugin"

    def __init__(self, width: int = 2, kv_len=None, head_dim=None, scale=None) -> None:
        super().__init__(kv_len=kv_len, head_dim=head_dim, scale=scale)
        self.width = width

    def forward(self, q, k, v, causal=False):
        return v[..., : q.shape[-2], :]

    def flops(self, batch, heads, q_len, kv_len, head_dim, causal):
        return 1


def test_forward_and_flops_are_abstract() -> None:
    assert AttentionVariant.__abstractmethods__ == {"forward", "flops"}

    class NoFlops(AttentionVariant):
        name = "no_flops"

        def forward(self, q, k, v, causal=False):
            return q

    with pytest.raises(TypeError, match="flops"):
        NoFlops()
    module = _TinyPlugin()  # both implemented: an ordinary nn.Module
    assert isinstance(module, torch.nn.Module) and module.flops(1, 1, 1, 1, 1, False) == 1


class _NoisyFull(FullAttention):
    """Exact attention off by a relative 1e-4: beyond the default fp32 tolerance."""

    def forward(self, q, k, v, causal=False):
        return super().forward(q, k, v, causal) * (1 + 1e-4)


class _NoisyFullDeclared(_NoisyFull):
    TOLERANCES = {**FullAttention.TOLERANCES, torch.float32: (1e-6, 1e-3)}


def test_the_kit_holds_a_variant_to_its_declared_tolerances() -> None:
    assert AttentionVariant.TOLERANCES[torch.float32] == (1e-6, 1e-5)
    with pytest.raises(AssertionError, match="exact variant off by rel"):
        check_exact_matches_reference(_NoisyFull)
    check_exact_matches_reference(_NoisyFullDeclared)  # its own, looser, bound


@pytest.mark.parametrize("name", variants.available())
def test_tolerances_cover_every_supported_dtype(name: str) -> None:
    cls = variants.get_class(name)
    for table in (cls.TOLERANCES, cls.GRAD_TOLERANCES):
        assert set(cls.supported_dtypes) <= set(table)


class _ForgetfulLinear(LinearAttention):
    """A wrong state update: the first step's first token never enters the running sum."""

    def step(self, q, k, v, state):
        before = state["kv"].clone()
        out, state = super().step(q, k, v, state)
        if not getattr(self, "_forgot", False):
            self._forgot = True
            state["kv"].copy_(before)
        return out, state


class _ForgetfulFull(FullAttention):
    """A wrong KV cache: each step's tokens are written one slot too far (the slot of the first
    new token is never written)."""

    def step(self, q, k, v, state):
        state.length += 1
        out, state = super().step(q, k, v, state)
        state.length -= 1
        return out, state


class _TilesHeads(FullAttention):
    """Grouped heads handled natively but wrongly: query head h reads KV head h % kv_heads (a
    tile) where the layout is h // group (an interleave)."""

    gqa = "native"

    def forward(self, q, k, v, causal=False):
        group = q.shape[1] // k.shape[1]
        return super().forward(q, k.repeat(1, group, 1, 1), v.repeat(1, group, 1, 1), causal)


@pytest.mark.parametrize("wrong", [_ForgetfulLinear, _ForgetfulFull])
def test_the_decode_check_fails_on_a_wrong_state_update(wrong) -> None:
    with pytest.raises(AssertionError, match="decode differs from the causal forward"):
        check_decode(wrong)


def test_the_grouped_heads_check_fails_on_a_wrong_grouping() -> None:
    with pytest.raises(AssertionError, match="grouped heads differ"):
        check_grouped_heads(_TilesHeads)


class _DeclaresUnsupported(FullAttention):
    gqa = "unsupported"


def test_a_variant_may_refuse_grouped_heads() -> None:
    check_grouped_heads(_DeclaresUnsupported)  # refused with a reason: passes
    module = _DeclaresUnsupported()
    q, k = torch.randn(1, 4, 8, 16), torch.randn(1, 2, 8, 16)
    assert "grouped heads" in module.not_supported_reasons(q, k, k, False)[0]
    with pytest.raises(ValueError, match="grouped heads"):
        module(q, k, k)
