"""Real-model fidelity: any attention variant inside pretrained all-MiniLM-L6-v2.

``transformers`` (>= 4.53, written against 5.x) has a registry of attention functions,
``AttentionInterface``; a model whose ``attn_implementation`` names one calls it in every layer
as ``fn(module, query, key, value, attention_mask, scaling=..., dropout=..., **kwargs)`` with
``query (B, H, Nq, D)``, ``key``/``value (B, H, Nk, D)``, and expects ``(attn_output (B, Nq, H,
D), attn_weights or None)``. :func:`register_variant` wraps an :class:`AttentionVariant` in such
a function and also registers ``sdpa``'s mask builder under the same name, because transformers
hands a custom implementation without a mask builder *no padding mask at all*.

Padding. Variants take no mask, so the adapter runs every sequence at its true length: the
batch is grouped by the set of valid (unpadded) keys, each group's valid tokens are gathered,
the variant runs on them, and the outputs are scattered back; outputs at padded query positions
are zero (nothing reads them: pooling and the next layer's keys exclude them). The loop is over
groups of batch items, never over tokens. Padding therefore never changes a real token's output,
whatever the variant (tested). A variant that cannot run a group's inputs
(``not_supported_reasons``: length limits, causal-only, ...) raises :class:`VariantUnsupported`
with the reasons; :func:`measure_realmodel_point` turns that into an ``unsupported`` row.

Scale. The model's ``scaling`` is passed to the variant as its ``scale`` for the call when its
constructor takes ``scale`` (the model's temperature wins over the variant's configured one,
since the weights were trained with it); a variant without ``scale`` is unsupported when the
model's scaling differs from ``1/sqrt(D)`` (MiniLM's does not).

Public functions: :func:`register_variant`, :func:`unregister`, :func:`use_variant`,
:func:`embed`, :func:`measure_realmodel_point`, :func:`retrieval_check`,
:func:`attention_heatmap_data`.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import re
import statistics
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from harness.realmodel import minilm
from variants.base import AttentionVariant

#: Defaults of the ``realmodel:`` config block (conf/experiment/realmodel.yaml documents them).
REALMODEL_DEFAULTS: dict[str, Any] = {
    "lengths": [64, 128, 256, 512],  # token lengths of the texts ([CLS] and [SEP] included)
    "texts_per_length": 4,  # distinct pydoc passages per length
    "batch_size": 4,  # texts per forward pass (mixed lengths, right-padded)
    "repeats": 3,  # timed passes over all texts after the warm-up pass; time_ms is the median
    "retrieval_pairs": 32,  # pydoc pairs of the retrieval check per point; 0 turns it off
}

_names = itertools.count()


class VariantUnsupported(RuntimeError):
    """The variant cannot run the inputs the model hands it; ``reasons`` says why."""

    def __init__(self, reasons: list[str]) -> None:
        super().__init__("; ".join(reasons))
        self.reasons = reasons


# ------------------------------------------------------------------------------- the adapter
def _allowed(mask: Tensor) -> Tensor:
    """Boolean ``(B, Nq, Nk)`` "may attend" from a boolean or additive 4-D mask."""
    if mask.dim() != 4:
        raise VariantUnsupported([f"attention mask of shape {tuple(mask.shape)} is not 4-D"])
    if mask.shape[1] != 1 and not bool((mask == mask[:, :1]).all()):
        raise VariantUnsupported(["per-head attention masks are not supported by the adapter"])
    mask = mask[:, 0]
    if mask.dtype == torch.bool:
        return mask
    # additive masks (eager): 0 where allowed, the dtype's minimum or -inf where not
    return mask > torch.finfo(mask.dtype).min / 2


def _key_valid(mask: Tensor | None, q_len: int, kv_len: int, causal: bool) -> Tensor | None:
    """Valid keys ``(B, Nk)`` of a key-padding mask (``None``: no padding anywhere).

    Any other mask pattern (a sliding window, packed sequences) would be silently lost by a
    variant that takes no mask, so it is refused with a reason instead.
    """
    if mask is None:
        return None
    allowed = _allowed(mask)  # (B, Nq, Nk)
    valid = allowed.any(dim=-2)  # (B, Nk): a key some query may see
    expected = valid[:, None, :].expand_as(allowed)
    if causal:
        from variants.base import causal_mask

        expected = expected & causal_mask(q_len, kv_len, device=mask.device)
    if q_len == kv_len:
        # a padded query row may be anything (fully masked or like the others): compare real rows
        rows = valid[:, :, None].expand_as(allowed)
        same = bool(((allowed == expected) | ~rows).all())
    else:
        same = bool((allowed == expected).all())
    if not same:
        reason = (
            "the model's attention mask is not a key-padding mask (the adapter honours padding "
            "and the causal flag only)"
        )
        raise VariantUnsupported([reason])
    return None if bool(valid.all()) else valid


@contextlib.contextmanager
def _model_scale(
    variant: AttentionVariant, scaling: float | None, head_dim: int
) -> Iterator[None]:
    """Run the variant with the model's softmax scale for the duration of one call."""
    if scaling is None:
        yield
        return
    if "scale" not in variant._config_keys():
        if not math.isclose(scaling, 1.0 / math.sqrt(head_dim), rel_tol=1e-6):
            raise VariantUnsupported(
                [
                    f"{variant.name}: the model needs softmax scale {scaling:.6g} but the variant "
                    "has no scale parameter"
                ]  # fmt: skip
            )
        yield
        return
    previous = variant.scale
    variant.scale = float(scaling)
    try:
        yield
    finally:
        variant.scale = previous


def _run_variant(
    variant: AttentionVariant, q: Tensor, k: Tensor, v: Tensor, causal: bool
) -> Tensor:
    reasons = variant.not_supported_reasons(q, k, v, causal)
    if reasons:
        raise VariantUnsupported(reasons)
    return variant(q, k, v, causal=causal)  # (B, H, Nq, Dv)


def make_attention_function(variant: AttentionVariant) -> Callable[..., tuple[Tensor, None]]:
    """A transformers attention function that runs ``variant`` (see the module docstring).

    Args:
        variant: Any attention variant, built-in or plugin.

    Returns:
        ``fn(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs)
        -> (attn_output (B, Nq, H, D), None)``.
    """

    def attention(
        module: torch.nn.Module,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        attention_mask: Tensor | None,
        scaling: float | None = None,
        dropout: float = 0.0,
        **kwargs: Any,
    ) -> tuple[Tensor, None]:
        if dropout and module.training:
            warnings.warn(
                f"{variant.name}: attention dropout {dropout} is ignored by the attnbench adapter",
                stacklevel=2,
            )
        causal = kwargs.get("is_causal")
        causal = bool(getattr(module, "is_causal", False) if causal is None else causal)
        b, _, nq, d = query.shape
        nk = key.shape[-2]
        valid = _key_valid(attention_mask, nq, nk, causal)
        with _model_scale(variant, scaling, d):
            if valid is None:
                out = _run_variant(variant, query, key, value, causal)  # (B, H, Nq, Dv)
            else:
                out = query.new_zeros(b, query.shape[1], nq, value.shape[-1])
                # group the batch items with the same valid keys: one variant call per group
                groups: dict[bytes, list[int]] = {}
                for i in range(b):
                    groups.setdefault(valid[i].cpu().numpy().tobytes(), []).append(i)
                for items in groups.values():
                    rows = torch.tensor(items, device=query.device)
                    keys = valid[items[0]].nonzero().squeeze(-1)  # (Lk,)
                    k_g = key[rows][:, :, keys]  # (G, H, Lk, D)
                    v_g = value[rows][:, :, keys]  # (G, H, Lk, Dv)
                    if nq == nk:  # self-attention: padded queries are dropped as well
                        q_g = query[rows][:, :, keys]  # (G, H, Lk, D)
                        o_g = _run_variant(variant, q_g, k_g, v_g, causal)
                        block = out[rows]
                        block[:, :, keys] = o_g.to(out.dtype)
                        out[rows] = block
                    else:
                        out[rows] = _run_variant(variant, query[rows], k_g, v_g, causal).to(
                            out.dtype
                        )
        return out.transpose(1, 2).contiguous(), None  # (B, Nq, H, Dv)

    attention.__name__ = f"attnbench_{variant.name}_attention"
    return attention


def register_variant(variant: AttentionVariant, name: str | None = None) -> str:
    """Register ``variant`` as a transformers attention implementation; returns its name.

    Args:
        variant: The variant to run in every attention layer of a model.
        name: Implementation name; default ``attnbench_<variant>_<n>``, unique per call.
            Registering an existing name replaces its function.

    Returns:
        The name to pass as ``attn_implementation=`` or to ``model.set_attn_implementation``.
    """
    try:
        from transformers import AttentionInterface
    except ImportError as exc:
        raise minilm.RealModelUnavailable(
            f"transformers is not installed; {minilm.INSTALL_HINT}"
        ) from exc
    name = name or f"attnbench_{variant.name}_{next(_names)}"
    AttentionInterface.register(name, make_attention_function(variant))
    try:
        from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
    except ImportError:  # transformers < 4.53 builds an eager 4-D mask for any implementation
        return name
    # Without a mask builder of its own name, transformers passes attention_mask=None to a
    # custom implementation, i.e. padded keys would be attended. sdpa's builder gives a boolean
    # (B, 1, Nq, Nk) mask, True where allowed, or None when nothing is padded.
    AttentionMaskInterface.register(name, sdpa_mask)
    return name


def unregister(name: str) -> None:
    """Remove an implementation registered by :func:`register_variant`."""
    from transformers import AttentionInterface

    AttentionInterface._global_mapping.pop(name, None)
    with contextlib.suppress(ImportError):
        from transformers.masking_utils import AttentionMaskInterface

        AttentionMaskInterface._global_mapping.pop(name, None)


@contextlib.contextmanager
def use_variant(model: Any, variant: AttentionVariant | None) -> Iterator[Any]:
    """Run ``model`` with ``variant`` in every attention layer inside the ``with`` block.

    ``None`` leaves the model's own implementation. The previous implementation is restored and
    the registration removed on exit, so the shared cached model is left as it was.
    """
    if variant is None:
        yield model
        return
    previous = model.config._attn_implementation
    name = register_variant(variant)
    try:
        model.set_attn_implementation(name)
        yield model
    finally:
        model.set_attn_implementation(previous)
        unregister(name)


# ------------------------------------------------------------------------------- embeddings
@dataclass
class Embeddings:
    """Sentence embeddings and per-layer hidden states of a list of texts.

    Attributes:
        embeddings: ``(n_texts, 384)`` L2-normalised mean-pooled embeddings (float32, CPU).
        hidden_states: ``hidden_states[l][i]`` is text i's ``(len_i, 384)`` output of layer
            ``l`` (0 = the embedding layer, 1..6 the transformer layers), real tokens only;
            empty when not requested.
        lengths: Token count of each text ([CLS] and [SEP] included).
        time_ms: Wall time of the model forward passes over all the texts.
    """

    embeddings: Tensor
    hidden_states: list[list[Tensor]]
    lengths: list[int]
    time_ms: float


def _synchronize(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def embed(
    texts: list[str],
    variant: AttentionVariant | None = None,
    *,
    lengths: int | list[int] | None = None,
    batch_size: int = 8,
    device: str = "cpu",
    hidden_states: bool = True,
) -> Embeddings:
    """Sentence embeddings as all-MiniLM-L6-v2 is meant to be used, with any attention.

    Texts are tokenized (truncated to ``lengths``), right-padded in batches of ``batch_size``,
    run through the model, mean-pooled over the attention mask and L2-normalised (the model's
    sentence-transformers pooling).

    Args:
        texts: The texts.
        variant: Attention to run in every layer; ``None`` is the stock model (``sdpa``).
        lengths: Maximum tokens per text (one int or one per text); default 512.
        batch_size: Texts per forward pass.
        device: Device of the model.
        hidden_states: Also return every layer's hidden states (real tokens only).

    Raises:
        VariantUnsupported: The variant cannot run some of the inputs.
    """
    if not texts:
        raise ValueError("embed: texts is empty")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"embed: batch_size={batch_size!r} must be an integer >= 1")
    model = minilm.load_model(device)
    per_text = (
        lengths if isinstance(lengths, list) else [lengths or minilm.MAX_TOKENS] * len(texts)
    )
    if len(per_text) != len(texts):
        raise ValueError(f"embed: {len(per_text)} lengths for {len(texts)} texts")
    pooled: list[Tensor] = []
    layers: list[list[Tensor]] = []
    true_lengths: list[int] = []
    elapsed = 0.0
    with use_variant(model, variant), torch.no_grad():
        for start in range(0, len(texts), batch_size):
            batch = minilm.encode(
                texts[start : start + batch_size], per_text[start : start + batch_size]
            )
            batch = {name: t.to(device) for name, t in batch.items()}
            _synchronize(device)
            t0 = time.perf_counter()
            out = model(**batch, output_hidden_states=hidden_states)
            _synchronize(device)
            elapsed += time.perf_counter() - t0
            mask = batch["attention_mask"].unsqueeze(-1).to(out.last_hidden_state.dtype)
            mean = (out.last_hidden_state * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            pooled.append(torch.nn.functional.normalize(mean.float(), dim=-1).cpu())
            counts = batch["attention_mask"].sum(1).tolist()
            true_lengths.extend(counts)
            if hidden_states:
                if not layers:
                    layers = [[] for _ in out.hidden_states]
                for layer, states in enumerate(out.hidden_states):
                    layers[layer].extend(
                        states[i, :n].float().cpu() for i, n in enumerate(counts)
                    )  # right padding: the real tokens come first
    return Embeddings(torch.cat(pooled), layers, true_lengths, elapsed * 1e3)


# ------------------------------------------------------------------------------- the experiment
def _realmodel_config(point: Mapping[str, Any]) -> dict[str, Any]:
    cfg = dict(REALMODEL_DEFAULTS)
    cfg.update({k: v for k, v in (point.get("realmodel") or {}).items() if v is not None})
    unknown = sorted(set(cfg) - set(REALMODEL_DEFAULTS))
    if unknown:
        raise ValueError(
            f"realmodel: unknown key(s) {', '.join(unknown)}; allowed: "
            f"{', '.join(REALMODEL_DEFAULTS)}"
        )
    lengths = cfg["lengths"]
    if isinstance(lengths, int):
        lengths = [lengths]
    lengths = [int(n) for n in lengths]
    if not lengths or any(not 2 <= n <= minilm.MAX_TOKENS for n in lengths):
        raise ValueError(f"realmodel: lengths={lengths} must be in [2, {minilm.MAX_TOKENS}]")
    cfg["lengths"] = sorted(set(lengths))
    for field in ("texts_per_length", "batch_size", "repeats", "retrieval_pairs"):
        value = cfg[field]
        low = 0 if field == "retrieval_pairs" else 1
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"realmodel: {field}={value!r} must be an integer >= {low}")
    return cfg


def realmodel_texts(lengths: list[int], texts_per_length: int, seed: int) -> tuple[list, list]:
    """The experiment's texts: ``texts_per_length`` pydoc passages truncated to each length.

    Interleaved by length (64, 128, ..., 64, 128, ...) so that every batch mixes lengths and
    padding is exercised. Returns ``(texts, lengths)``.
    """
    per_length = {
        n: minilm.pydoc_texts(texts_per_length, min_tokens=n, seed=seed) for n in lengths
    }
    texts, text_lengths = [], []
    for i in range(texts_per_length):
        for n in lengths:
            texts.append(per_length[n][i])
            text_lengths.append(n)
    return texts, text_lengths


_exact_cache: dict[tuple, tuple[Embeddings, dict[str, float]]] = {}


def _timed(fn: Callable[[], Embeddings], repeats: int) -> tuple[Embeddings, dict[str, float]]:
    """Run once (warm-up, and the result), then ``repeats`` timed runs of the forward passes."""
    result = fn()
    times = [fn().time_ms for _ in range(repeats)]
    quartiles = statistics.quantiles(times, n=4, method="inclusive") if len(times) > 1 else None
    return result, {
        "time_ms": statistics.median(times),
        "time_iqr_ms": (quartiles[2] - quartiles[0]) if quartiles else 0.0,
        "repeats": len(times),
    }


def _hidden_rel_err(exact: Embeddings, approx: Embeddings) -> list[float]:
    """Relative Frobenius error of each transformer layer's output over all real tokens."""
    errs = []
    for layer in range(1, len(exact.hidden_states)):
        ref = torch.cat(exact.hidden_states[layer]).double()
        got = torch.cat(approx.hidden_states[layer]).double()
        errs.append(float((got - ref).norm() / ref.norm()))
    return errs


def _environment(device: str) -> dict[str, Any]:
    try:
        from harness.measure.env import environment
    except (
        ImportError
    ):  # harness.measure.env is optional for this module; keep the versions at least
        import platform
        from datetime import datetime, timezone

        return {
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "host": platform.node(),
            "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "threads": torch.get_num_threads(),
        }
    return environment(device)


def measure_realmodel_point(
    point: Mapping[str, Any], factory: Callable[[int], AttentionVariant]
) -> list[dict[str, Any]]:
    """One real-model point: MiniLM with exact attention and with the variant, same texts.

    Args:
        point: The resolved point (``docs/notes/CONTRACTS.md``); reads ``variant``, ``params``,
            ``device``, ``dtype``, ``seed``, optional ``knob``/``knob_value`` and the
            ``realmodel`` block (:data:`REALMODEL_DEFAULTS`).
        factory: ``factory(seed) -> AttentionVariant``; build it for ``seq_len`` = the longest
            length and ``head_dim`` = 32.

    Returns:
        One ``fwd`` row with the columns of ``harness.analysis.rows.COLUMNS`` (``q_len`` is the
        longest text, ``batch`` the batch size, ``time_ms`` the variant model's forward time over
        all texts) plus ``task`` = "realmodel", ``knob``, ``knob_value``, ``embed_cosine`` (mean
        cosine of each text's embedding to the exact model's), ``embed_cosine_min``,
        ``embed_cosine_by_length`` (JSON), ``hidden_rel_err`` (JSON list, layers 1..6),
        ``exact_time_ms`` and ``texts``; with ``realmodel.retrieval_pairs > 0`` also the
        retrieval check (:func:`retrieval_check`): ``retrieval_exact_top1``, ``retrieval_top1``,
        ``retrieval_mean_rank``, ``retrieval_agree_top1``. Failures are rows with status
        unsupported, nan or error and the reason; this function does not raise for them.
    """
    device = str(point.get("device") or "cpu")
    seed = int(point.get("seed") or 0)
    row: dict[str, Any] = {
        "task": "realmodel",
        "variant": point.get("variant"),
        "params": json.dumps(point.get("params") or {}, sort_keys=True, default=str),
        "device": device,
        "dtype": str(point.get("dtype") or "float32").replace("torch.", ""),
        "heads": minilm.NUM_HEADS,
        "head_dim": minilm.HEAD_DIM,
        "causal": False,
        "inputs": "pydoc",
        "seed": seed,
        "pass": "fwd",
        "knob": point.get("knob"),
        "knob_value": point.get("knob_value"),
        "status": None,
        "reason": None,
    }
    row.update(_environment(device))
    try:
        cfg = _realmodel_config(point)
    except ValueError as exc:
        return [row | {"status": "error", "reason": str(exc)}]
    longest = max(cfg["lengths"])
    row.update(
        batch=cfg["batch_size"],
        q_len=longest,
        kv_len=longest,
        inputs_params=json.dumps(
            {k: cfg[k] for k in ("lengths", "texts_per_length")}, sort_keys=True
        ),
    )
    if row["dtype"] != "float32":  # the weights are float32; other dtypes are not a measure here
        return [row | {"status": "unsupported", "reason": "realmodel runs in float32 only"}]
    try:
        variant = factory(seed).to(device).eval()
    except Exception as exc:  # noqa: BLE001 - a bad variant is a row, the sweep goes on
        return [row | {"status": "error", "reason": f"{type(exc).__name__}: {exc}"}]
    row["params"] = json.dumps(variant.config(), sort_keys=True, default=str)
    if row["knob"] is None and variant.knob is not None:
        row["knob"] = variant.knob
        row["knob_value"] = variant.config().get(variant.knob)
    # Refuse by the variant's own reasons before loading anything (one probe per length).
    reasons: list[str] = []
    for n in cfg["lengths"]:
        probe = torch.zeros(1, minilm.NUM_HEADS, n, minilm.HEAD_DIM, device=device)
        reasons += [r for r in variant.not_supported_reasons(probe, probe, probe, False)
                    if r not in reasons]  # fmt: skip
    if reasons:
        return [row | {"status": "unsupported", "reason": "; ".join(reasons)}]
    try:
        texts, lengths = realmodel_texts(cfg["lengths"], cfg["texts_per_length"], seed)
        row["texts"] = len(texts)
        try:
            row["flops"] = sum(
                minilm.NUM_LAYERS
                * variant.flops(1, minilm.NUM_HEADS, n, n, minilm.HEAD_DIM, False)
                for n in lengths
            )
        except NotImplementedError:
            pass
        key = (device, tuple(texts), tuple(lengths), cfg["batch_size"], cfg["repeats"])
        if key not in _exact_cache:  # every point of a sweep job compares with the same run
            _exact_cache[key] = _timed(
                lambda: embed(texts, None, lengths=lengths, batch_size=cfg["batch_size"],
                              device=device),
                cfg["repeats"],
            )  # fmt: skip
        exact, exact_time = _exact_cache[key]
        approx, timing = _timed(
            lambda: embed(texts, variant, lengths=lengths, batch_size=cfg["batch_size"],
                          device=device),
            cfg["repeats"],
        )  # fmt: skip
    except VariantUnsupported as exc:
        return [row | {"status": "unsupported", "reason": str(exc)}]
    except Exception as exc:  # noqa: BLE001 - any failure is a row with its reason
        return [row | {"status": "error", "reason": f"{type(exc).__name__}: {exc}"}]
    row.update(timing, exact_time_ms=exact_time["time_ms"])
    if row.get("flops"):
        row["tflops"] = row["flops"] / (timing["time_ms"] * 1e-3) / 1e12
    if not bool(torch.isfinite(approx.embeddings).all()):
        return [row | {"status": "nan", "reason": "variant model's embeddings contain NaN/Inf"}]
    cosines = (exact.embeddings.double() * approx.embeddings.double()).sum(-1)  # (n_texts,)
    by_length = {
        str(n): float(cosines[[i for i, m in enumerate(lengths) if m == n]].mean())
        for n in cfg["lengths"]
    }
    row.update(
        status="ok",
        embed_cosine=float(cosines.mean()),
        embed_cosine_min=float(cosines.min()),
        embed_cosine_by_length=json.dumps(by_length),
        hidden_rel_err=json.dumps(_hidden_rel_err(exact, approx)),
    )
    if cfg["retrieval_pairs"]:
        try:
            found = retrieval_check({row["variant"]: variant}, cfg["retrieval_pairs"], device)
        except Exception as exc:  # noqa: BLE001 - the embedding figures above still stand
            row["notes"] = f"retrieval check failed: {type(exc).__name__}: {exc}"
        else:
            exact_r, approx_r = found.iloc[0], found.iloc[1]
            row.update(
                retrieval_pairs=cfg["retrieval_pairs"],
                retrieval_exact_top1=float(exact_r["top1"]),
                retrieval_top1=approx_r.get("top1"),
                retrieval_mean_rank=approx_r.get("mean_rank"),
                retrieval_agree_top1=approx_r.get("agree_top1"),
            )
    return [row]


# ------------------------------------------------------------------------------- retrieval
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"*(])")


def retrieval_pairs(n_pairs: int = 32) -> list[tuple[str, str]]:
    """Real sentence pairs: the first and second half of one pydoc paragraph.

    Paragraphs of 4 to 10 sentences and at most 150 words, one per topic first (then a second
    per topic, ...) so that the pairs cover different subjects; deterministic.
    """
    by_topic: dict[str, list[tuple[str, str]]] = {}
    for topic, paragraph in minilm.pydoc_paragraphs():
        sentences = _SENTENCE_END.split(paragraph)
        if not 4 <= len(sentences) <= 10 or len(paragraph.split()) > 150:
            continue
        half = len(sentences) // 2
        pair = (" ".join(sentences[:half]), " ".join(sentences[half:]))
        by_topic.setdefault(topic, []).append(pair)
    pairs: list[tuple[str, str]] = []
    for round_ in itertools.count():
        batch = [p[round_] for p in by_topic.values() if len(p) > round_]
        if not batch:
            break
        pairs.extend(batch)
    if len(pairs) < n_pairs:
        raise ValueError(f"retrieval_pairs: n_pairs={n_pairs} but only {len(pairs)} exist")
    return pairs[:n_pairs]


def _ranks(queries: Tensor, docs: Tensor) -> Tensor:
    """Rank (1 = best) of the true document of each query by cosine similarity."""
    sims = queries @ docs.T  # (n, n), embeddings are normalised
    true = sims.diagonal().unsqueeze(1)
    return (sims > true).sum(1) + 1


def retrieval_check(
    variants: AttentionVariant | Mapping[str, AttentionVariant] | None = None,
    n_pairs: int = 32,
    device: str = "cpu",
    batch_size: int = 16,
) -> Any:
    """Does the model still find the right neighbour with an approximate attention?

    Each pydoc paragraph is split in two halves (:func:`retrieval_pairs`); every first half is a
    query and all second halves are the candidates. The rank of the true second half by
    cosine similarity is computed with exact attention and with each variant.

    Args:
        variants: One variant, a ``{label: variant}`` mapping, or ``None`` (exact only).
        n_pairs: Number of pairs (queries and candidates).
        device: Device of the model.
        batch_size: Texts per forward pass.

    Returns:
        A pandas DataFrame, one row per attention (``exact`` first): ``variant``, ``params``,
        ``status``, ``n_pairs``, ``mean_rank``, ``median_rank``, ``top1`` (fraction at rank 1),
        ``top5``, ``agree_top1`` (fraction of queries whose best candidate is the same as with
        exact attention), ``embed_cosine`` (mean cosine of the embeddings to the exact
        model's) and ``reason`` for variants that could not run.
    """
    import pandas as pd

    if variants is None:
        variants = {}
    elif isinstance(variants, AttentionVariant):
        variants = {variants.name: variants}
    pairs = retrieval_pairs(n_pairs)
    texts = [q for q, _ in pairs] + [d for _, d in pairs]

    def run(variant: AttentionVariant | None) -> Embeddings:
        return embed(texts, variant, batch_size=batch_size, device=device, hidden_states=False)

    key = ("retrieval", n_pairs, device, batch_size)
    if key not in _exact_cache:  # the exact model's embeddings are the same for every variant
        _exact_cache[key] = run(None).embeddings.double()
    exact = _exact_cache[key]
    exact_best = (exact[:n_pairs] @ exact[n_pairs:].T).argmax(1)
    records = []
    for label, variant in [("exact", None), *variants.items()]:
        record: dict[str, Any] = {
            "variant": label,
            "params": "{}" if variant is None else json.dumps(variant.config(), default=str),
            "status": "ok",
            "n_pairs": n_pairs,
        }
        try:
            emb = exact if variant is None else run(variant.to(device).eval()).embeddings.double()
        except VariantUnsupported as exc:
            records.append(record | {"status": "unsupported", "reason": str(exc)})
            continue
        ranks = _ranks(emb[:n_pairs], emb[n_pairs:]).double()
        best = (emb[:n_pairs] @ emb[n_pairs:].T).argmax(1)
        record.update(
            mean_rank=float(ranks.mean()),
            median_rank=float(ranks.median()),
            top1=float((ranks == 1).double().mean()),
            top5=float((ranks <= 5).double().mean()),
            agree_top1=float((best == exact_best).double().mean()),
            embed_cosine=float((emb * exact).sum(-1).mean()),
            reason=None,
        )
        records.append(record)
    columns = ["variant", "params", "status", "n_pairs", "mean_rank", "median_rank", "top1",
               "top5", "agree_top1", "embed_cosine", "reason"]  # fmt: skip
    return pd.DataFrame.from_records(records, columns=columns)


# ------------------------------------------------------------------------------- heatmaps
def attention_heatmap_data(
    sentence: str = "The cat sat on the mat.",
    layer: int = 0,
    head: int = 0,
    variants: Mapping[str, AttentionVariant] | None = None,
) -> tuple[list[str], Any, dict[str, Any]]:
    """Exact and effective attention matrices of one MiniLM head on one sentence.

    Every variant here is linear in V, so feeding ``V = I`` (N x N) on the captured q, k returns
    the N x N matrix it effectively applies. Variants that cannot run the inputs are left out
    with a ``UserWarning`` naming the reason.

    Args:
        sentence: The text (its tokens, [CLS] and [SEP] included, label the axes).
        layer: Layer, 0..5.
        head: Head, 0..11.
        variants: ``{label: variant}``; may be empty (then only the tokens and exact matrix).

    Returns:
        ``(tokens, exact, {label: matrix})``: N tokens; float64 numpy ``(N, N)`` matrices, rows
        are queries.
    """
    from harness.measure.reference import reference_probs

    q, k, _, tokens = minilm.sentence_qkv(sentence, layer, head)  # (1, 1, N, 32) each
    n = q.shape[-2]
    exact = reference_probs(q, k)[0, 0].numpy()  # (N, N) float64
    matrices: dict[str, Any] = {}
    for label, variant in (variants or {}).items():
        variant = variant.eval()
        # float64 where supported so the matrix shows the approximation, not rounding
        dtype = torch.float64 if torch.float64 in variant.supported_dtypes else torch.float32
        q_, k_ = q.to(dtype), k.to(dtype)
        eye = torch.eye(n, dtype=dtype).reshape(1, 1, n, n)  # V = I: (1, 1, N, N)
        reasons = variant.not_supported_reasons(q_, k_, eye, False)
        if reasons:
            warnings.warn(f"heatmap: {label} left out: {'; '.join(reasons)}", stacklevel=2)
            continue
        with torch.no_grad():
            matrices[label] = variant(q_, k_, eye)[0, 0].double().numpy()  # (N, N)
    return tokens, exact, matrices
