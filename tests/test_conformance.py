"""The conformance kit over every registered variant (built-ins and installed plugins), and the
interface they share: the abstract methods, ``kv_len``, the tolerances per dtype."""

import functools
import warnings

import pytest
import torch

import variants
from harness.conformance import CHECKS, check_exact_matches_reference
from variants.base import AttentionVariant
from variants.full import FullAttention
from variants.linformer import LinformerAttention
from variants.longformer import LongformerAttention
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
}


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
