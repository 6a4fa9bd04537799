"""The conformance kit over every registered variant (built-ins and installed plugins), and the
constructor interface they share: the abstract methods, ``kv_len`` and its old name ``seq_len``."""

import functools
import warnings

import pytest
import torch

import variants
from harness.conformance import CHECKS
from variants.base import AttentionVariant, VariantConfigError
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
        warnings.simplefilter("error")  # the current name warns about nothing
        module = variants.create(name, kv_len=64, head_dim=16)
    assert module.kv_len == 64
    assert module.config()["kv_len"] == 64 and "seq_len" not in module.config()


@pytest.mark.parametrize("name", variants.builtin_names())
def test_seq_len_is_a_deprecated_alias(name: str) -> None:
    with pytest.warns(DeprecationWarning, match="seq_len= is deprecated, pass kv_len="):
        module = variants.create(name, seq_len=64, head_dim=16)
    assert module.kv_len == 64 and module.seq_len == 64
    with pytest.warns(DeprecationWarning), pytest.raises(VariantConfigError, match="disagree"):
        variants.create(name, seq_len=64, kv_len=32)
    with pytest.warns(DeprecationWarning), pytest.raises(VariantConfigError, match="seq_len=0"):
        variants.create(name, seq_len=0)


class _SeqLenPlugin(AttentionVariant):
    """A plugin written before the rename: its constructor names the length ``seq_len``."""

    name = "seq_len_plugin"

    def __init__(self, width: int = 2, seq_len=None, head_dim=None, scale=None) -> None:
        super().__init__(seq_len=seq_len, head_dim=head_dim, scale=scale)
        self.width = width

    def forward(self, q, k, v, causal=False):
        return v[..., : q.shape[-2], :]

    def flops(self, batch, heads, q_len, kv_len, head_dim, causal):
        return 1


def test_plugin_written_for_seq_len_takes_both_names() -> None:
    with pytest.warns(DeprecationWarning):  # raised by its own super().__init__(seq_len=...)
        old = _SeqLenPlugin(seq_len=48)
    with pytest.warns(DeprecationWarning):
        new = _SeqLenPlugin(kv_len=48, head_dim=8)
    assert old.kv_len == new.kv_len == 48 and new.seq_len == 48
    assert new.config() == {"width": 2, "seq_len": 48, "head_dim": 8, "scale": None}


def test_forward_and_flops_are_abstract() -> None:
    assert AttentionVariant.__abstractmethods__ == {"forward", "flops"}

    class NoFlops(AttentionVariant):
        name = "no_flops"

        def forward(self, q, k, v, causal=False):
            return q

    with pytest.raises(TypeError, match="flops"):
        NoFlops()
    module = _SeqLenPlugin()  # both implemented: an ordinary nn.Module
    assert isinstance(module, torch.nn.Module) and module.flops(1, 1, 1, 1, 1, False) == 1
