"""cosFormer attention as an attnbench plugin (registry name ``cosformer``)."""

from attnbench_cosformer.cosformer import CosFormerAttention

__all__ = ["CosFormerAttention"]
