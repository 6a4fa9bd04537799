"""The engine tuner (variants.tuning): choices, cache, user values, machines, bad cache files,
and that no timed call of the harness tunes. Timers are fakes: no test depends on a timing."""

from __future__ import annotations

import json

import pytest
from torch.utils.flop_counter import FlopCounterMode

import variants
from harness.conformance import make_qkv
from variants import tuning, tuning_cache
from variants.linear import LinearAttention
from variants.longformer import LongformerAttention
from variants.tuning import TUNER, Knob, Tuner
from variants.tuning_cache import TuningCacheWarning

pytestmark = pytest.mark.usefixtures("one_thread")

SHAPE = (1, 2, 300, 300, 16)
#: Milliseconds a fake timer gives each candidate chunk: 128 is the fastest.
CHUNK_MS = {32: 3.0, 64: 2.0, 128: 1.0}


def by_chunk(ms: dict[int, float]):
    """A fake timer: the time of a probe is its chunk's in ``ms`` (1 ms without a chunk; the
    group does not matter)."""
    return lambda probe: ms.get(probe.values.get("chunk_size"), 1.0)


@pytest.fixture
def tuner(monkeypatch, tmp_path):
    """Tuning on, a fresh cache folder, the process tuner with a fake timer (128 fastest)."""
    monkeypatch.setenv(tuning.ENV_TUNING, "on")
    monkeypatch.setenv(tuning_cache.ENV_CACHE_DIR, str(tmp_path))
    monkeypatch.setattr(TUNER, "timer", by_chunk(CHUNK_MS))
    TUNER.cache.clear()
    yield TUNER
    TUNER.cache.clear()


def entries(tmp_path) -> dict:
    return json.loads((tmp_path / "tuning.json").read_text())["entries"]


def test_a_tuned_value_is_used_and_the_flops_follow_it(tuner, tmp_path):
    q, k, v = make_qkv(SHAPE, seed=0)
    module = LinearAttention()
    runs = tuner.runs
    assert module.tune(q, k, v, causal=True)["chunk_size"] == 128
    assert tuner.runs == runs + 2  # the chunk, then the group with the chunk chosen
    assert module.engine_config() == {
        "chunk_size": 128, "chunk_size_tuned": True,
        "group_elements": 1 << 17, "group_elements_tuned": True,  # a tie: the default kept
    }  # fmt: skip
    with FlopCounterMode(display=False) as counter:
        module(q, k, v, causal=True)
    assert tuner.runs == runs + 2  # the second call reads the choice
    assert module.flops(*SHAPE, True) == counter.get_total_flops()
    assert module.flops(*SHAPE, True) == LinearAttention(chunk_size=128).flops(*SHAPE, True)
    assert module.flops(*SHAPE, True) != LinearAttention(chunk_size=64).flops(*SHAPE, True)
    (chunk_entry,) = [e for key, e in entries(tmp_path).items() if '"chunk_size"' in key[-40:]]
    assert chunk_entry["value"] == 128 and chunk_entry["candidates"] == [32, 64, 128]


def test_a_new_instance_reads_the_cache_and_a_new_process_the_file(tuner):
    q, k, v = make_qkv(SHAPE, seed=0)
    LinearAttention().tune(q, k, v, causal=True)
    runs = tuner.runs
    tuner.cache.clear()  # as a new process: the file only
    module = LinearAttention()
    module(q, k, v, causal=True)
    assert tuner.runs == runs and module.engine_config()["chunk_size"] == 128


def test_a_user_value_wins(tuner):
    q, k, v = make_qkv(SHAPE, seed=0)
    module = LinearAttention(chunk_size=32)
    config = module.tune(q, k, v, causal=True)
    assert config["chunk_size"] == 32 and not config["chunk_size_tuned"]
    assert config["group_elements_tuned"]  # still auto: tuned with the user's chunk
    both = LinearAttention(chunk_size=64, group_elements=1 << 16)
    runs = tuner.runs
    assert both.tune(q, k, v, causal=True) == {
        "chunk_size": 64, "chunk_size_tuned": False,
        "group_elements": 1 << 16, "group_elements_tuned": False,
    }  # fmt: skip
    assert tuner.runs == runs


def test_the_cache_key_separates_machines(tuner, monkeypatch, tmp_path):
    q, k, v = make_qkv(SHAPE, seed=0)
    LinearAttention().tune(q, k, v, causal=True)
    real = tuning_cache.cpu_model
    monkeypatch.setattr(tuning_cache, "cpu_model", lambda: "Fake CPU 9000")
    monkeypatch.setattr(TUNER, "timer", by_chunk({32: 1.0, 64: 2.0, 128: 3.0}))
    runs = tuner.runs
    assert LinearAttention().tune(q, k, v, causal=True)["chunk_size"] == 32
    assert tuner.runs == runs + 2  # nothing of the other machine was reused
    cpus = {json.loads(key)["machine"]["cpu"] for key in entries(tmp_path)}
    assert cpus == {"Fake CPU 9000", real()}
    monkeypatch.setattr(tuning_cache, "cpu_model", real)  # back here: this machine's choice
    assert LinearAttention().tune(q, k, v, causal=True)["chunk_size"] == 128
    assert tuner.runs == runs + 2


def test_the_shape_class_separates_dtypes_lengths_and_masking():
    q, k, v = make_qkv((2, 4, 300, 300, 16), seed=0)
    base = tuning.shape_class(q, k, v, True)
    assert base["q_len"] == 512 and base["batch_heads"] == 8
    assert tuning.shape_class(q[..., :256, :], k, v, True)["q_len"] == 256
    assert tuning.shape_class(q.double(), k, v, True)["dtype"] == "float64"
    assert tuning.shape_class(q, k, v, False) != base


@pytest.mark.parametrize(
    "text", ["{not json", '["a list"]', '{"format": 0, "entries": {}}', '{"format": 1}']
)
def test_a_corrupt_cache_file_is_ignored_with_a_warning(tuner, tmp_path, text):
    (tmp_path / "tuning.json").write_text(text)
    q, k, v = make_qkv(SHAPE, seed=0)
    with pytest.warns(TuningCacheWarning, match="ignored"):
        config = LinearAttention().tune(q, k, v, causal=True)
    assert config["chunk_size"] == 128 and config["chunk_size_tuned"]
    assert len(entries(tmp_path)) == 2  # rewritten as a valid file


@pytest.mark.parametrize(
    "spoil",
    [
        lambda e: e.update(value=48),  # not a candidate (today's list)
        lambda e: e.update(candidates=[16, 32]),  # the candidates changed since
        lambda e: e.update(value="128"),
        lambda e: e.clear(),
    ],
)
def test_a_stale_or_malformed_entry_is_ignored_with_a_warning(tuner, tmp_path, spoil):
    q, k, v = make_qkv(SHAPE, seed=0)
    LinearAttention().tune(q, k, v, causal=True)
    data = json.loads((tmp_path / "tuning.json").read_text())
    for entry in data["entries"].values():
        spoil(entry)
    (tmp_path / "tuning.json").write_text(json.dumps(data))
    tuner.cache.clear()
    runs = tuner.runs
    with pytest.warns(TuningCacheWarning, match="stale or malformed"):
        config = LinearAttention().tune(q, k, v, causal=True)
    assert config["chunk_size"] == 128 and tuner.runs == runs + 2


def test_tuning_off_takes_the_defaults(tuner, monkeypatch, tmp_path):
    q, k, v = make_qkv(SHAPE, seed=0)
    LinearAttention().tune(q, k, v, causal=True)  # a cached 128 ...
    monkeypatch.setenv(tuning.ENV_TUNING, "off")
    runs = tuner.runs
    config = LinearAttention().tune(q, k, v, causal=True)  # ... not used: the defaults
    assert (config["chunk_size"], config["chunk_size_tuned"], tuner.runs) == (64, False, runs)


def test_the_default_is_kept_unless_beaten_by_the_margin():
    knob = Knob("chunk_size", 64, (32, 64, 128), ("fwd",))
    for ms, want in [({32: 1.99, 64: 2.0, 128: 2.01}, 64), ({32: 1.9, 64: 2.0, 128: 2.1}, 32)]:
        fake = Tuner(timer=lambda probe, ms=ms: ms[probe.values["chunk_size"]])
        fake.cache.get = lambda key, candidates: None
        fake.cache.put = lambda *args: None
        make = lambda values: {"fwd": lambda: None, "fwd_bwd": lambda: None}  # noqa: E731
        assert fake._tune("key", knob, {"chunk_size": 64}, make, ("fwd",), "cpu") == want


def test_the_score_multiplies_the_passes_a_knob_changes():
    # 32 wins the forward by 10%, loses forward+backward by 20%: their product picks 64
    times = {(32, "fwd"): 0.9, (64, "fwd"): 1.0, (32, "fwd_bwd"): 1.2, (64, "fwd_bwd"): 1.0}
    fake = Tuner(timer=lambda probe: times[probe.values["chunk_size"], probe.pass_name])
    fake.cache.put = lambda *args: None
    knob = Knob("chunk_size", 64, (32, 64))
    make = lambda values: {"fwd": lambda: None, "fwd_bwd": lambda: None}  # noqa: E731
    assert fake._tune("key", knob, {}, make, ("fwd", "fwd_bwd"), "cpu") == 64
    assert fake._tune("key", knob, {}, make, ("fwd",), "cpu") == 32


def test_a_failing_candidate_warns_and_leaves_the_default(tuner, monkeypatch):
    def broken(probe):
        raise RuntimeError("no timer today")

    monkeypatch.setattr(TUNER, "timer", broken)
    q, k, v = make_qkv(SHAPE, seed=0)
    with pytest.warns(RuntimeWarning, match="no timer today"):
        config = LinearAttention().tune(q, k, v, causal=True)
    assert config["chunk_size"] == 64 and not config["chunk_size_tuned"]


def test_no_tuning_under_a_dispatch_mode_or_suspended(tuner):
    q, k, v = make_qkv(SHAPE, seed=0)
    module = LinearAttention()
    runs = tuner.runs
    with FlopCounterMode(display=False):
        module(q, k, v, causal=True)
    with tuning.suspended():
        module(q, k, v, causal=True)
    assert tuner.runs == runs and module.engine_config()["chunk_size"] == 64
    module(q, k, v, causal=True)  # the defaults were not kept: the first free call tunes
    assert tuner.runs == runs + 2 and module.engine_config()["chunk_size"] == 128


def test_longformer_tunes_each_pass_blocking_in_its_own_pass(tuner, monkeypatch):
    # the forward's blocking is timed in the forward, the backward's in forward+backward
    seen = []

    def timer(probe):
        seen.append((tuple(probe.values), probe.pass_name))
        return {16: 1.0, 32: 2.0, 64: 3.0}.get(probe.values.get("forward_block_size"), 1.0)

    monkeypatch.setattr(TUNER, "timer", timer)
    q, k, v = make_qkv((1, 2, 600, 600, 16), seed=0)
    module = LongformerAttention(window=256, backend="chunked")
    config = module.tune(q, k, v, causal=False)
    assert config["forward_block_size"] == 16 and config["forward_block_size_tuned"]
    assert {p for _, p in seen} == {"fwd", "fwd_bwd"}
    fwd_only = LongformerAttention(window=256, backend="chunked", num_global=0)
    config = fwd_only.tune(q, k, v, causal=False, backward=False)
    assert not config["block_size_tuned"]  # not timed without a backward
    assert module.flops(1, 2, 600, 600, 16, False) == variants.create(
        "longformer", window=256, backend="chunked", forward_block_size=16
    ).flops(1, 2, 600, 600, 16, False)


def test_variants_without_knobs_do_not_tune(tuner):
    q, k, v = make_qkv(SHAPE, seed=0)
    runs = tuner.runs
    for name in ("sdpa", "full", "linear"):  # linear: bidirectional has none
        assert variants.create(name).tune(q, k, v, causal=False) == {}
    assert tuner.runs == runs


def test_knob_values_are_checked():
    with pytest.raises(variants.VariantConfigError, match="chunk_size=0 must be an integer"):
        LinearAttention(chunk_size=0)
    with pytest.raises(variants.VariantConfigError, match="block_size=True"):
        LongformerAttention(block_size=True)


def _watch(calls: list, fn):
    """``fn`` recording in ``calls`` how many tuning runs happened inside each call."""

    def wrapped(*args, **kwargs):
        before = TUNER.runs
        out = fn(*args, **kwargs)
        calls.append(TUNER.runs - before)
        return out

    return wrapped


@pytest.mark.parametrize(
    "name, params", [("linear", {}), ("longformer", {"window": 32, "backend": "chunked"})]
)
def test_no_timed_call_of_the_attention_task_tunes(tuner, monkeypatch, name, params):
    from harness.app.point import Point
    from harness.measure import memory, timing
    from harness.measure.config import MeasureConfig
    from harness.measure.factory import make_factory
    from harness.tasks.attention.measure import measure

    timed: list[int] = []
    for module, attr in [(timing, "time_callable"), (timing, "time_once_ms"),
                         (memory, "peak_memory")]:  # fmt: skip
        monkeypatch.setattr(module, attr, _watch(timed, getattr(module, attr)))
    point = Point(
        variant_cls=variants.get_class(name), task="attention", variant=name, params=params,
        batch=1, heads=2, q_len=300, kv_len=300, head_dim=16, dtype="float32", device="cpu",
        causal=True, inputs="gaussian", inputs_params={"temperature": 1.0}, seed=0, seeds=[0],
        passes=["fwd", "bwd", "fwd_bwd"],
        measure=MeasureConfig(min_run_time=0.01, threads=1, attn_matrix_max_n=64),
    )  # fmt: skip
    runs = tuner.runs
    rows = measure(point, make_factory(point.variant_cls, params, 300, 16))
    assert tuner.runs > runs  # it tuned: before setup, the timings and the memory readings
    assert timed and not any(timed)
    for row in rows:
        assert row["status"] == "ok", row["reason"]
        knobs = [key for key in row["tuned"] if not key.endswith("_tuned")]
        assert knobs and all(row["tuned"][f"{key}_tuned"] for key in knobs)
    if name == "linear":  # the FLOPs follow the tuned chunk
        assert rows[0]["tuned"]["chunk_size"] == 128
        assert rows[0]["flops"] == LinearAttention(chunk_size=128).flops(1, 2, 300, 300, 16, True)


def test_no_timed_call_of_the_speed_check_tunes(tuner, monkeypatch):
    from harness.measure import env, speedcheck
    from harness.measure.speedcheck.machine import tuned_section
    from harness.measure.speedcheck.targets import SpeedVariant

    monkeypatch.setattr(env, "matmul_tflops", lambda device, dtype: 0.1)
    timed: list[int] = []
    columns = [
        SpeedVariant(variant="linear", label="linear"),
        SpeedVariant(variant="longformer", params={"window": 32}, label="longformer"),
    ]
    table = speedcheck.measure_table(
        256, 2, 16, rounds=1, timer=_watch(timed, lambda fn: [fn(), 1.0][1]),
        table_variants=columns,
    )  # fmt: skip
    assert timed and not any(timed)
    assert table.passes[("fwd", True)]["linear"].tuned["chunk_size"] == 128
    text = "\n".join(tuned_section(table))
    assert "| linear | causal | chunk_size=128 (tuned)" in text
    assert "forward_block_size=" in text


def test_the_tune_command_tunes_a_shape_and_a_preset_grid(tuner, capsys):
    from harness.app import tune

    shape = ["--seq-len", "300", "--heads", "2", "--head-dim", "16", "--threads", "1"]
    assert tune.cli(["--variant", "linear", "--causal", *shape]) == 0
    out = capsys.readouterr().out
    assert "linear B1 H2 q300 kv300 d16 float32 causal: chunk_size=128" in out
    assert "tuned in" in out
    grid = ["+experiment=quick", "variant=linear,sdpa", "seq_len=300", "causal=true"]
    point = ["heads=2", "head_dim=16", "measure.threads=1", "passes=[fwd,fwd_bwd]"]
    assert tune.cli([*grid, *point]) == 0
    out = capsys.readouterr().out
    assert "linear B1 H2 q300 kv300 d16 float32 causal: chunk_size=128" in out
    assert "(from the cache)" in out and "sdpa B1 H2 q300" in out and "no engine knobs" in out


@pytest.mark.parametrize("name", ["retention", "deltanet"])
def test_the_recurrent_operators_tune_their_chunk_and_count_with_it(tuner, name):
    import variants

    q, k, v = make_qkv(SHAPE, seed=0)
    module = variants.create(name)
    assert module.tune(q, k, v, causal=True) == {"chunk_size": 128, "chunk_size_tuned": True}
    with FlopCounterMode(display=False):
        module(q, k, v, causal=True)  # the second call reads the choice
    fixed = variants.create(name, chunk_size=128)
    assert module.flops(*SHAPE, True) == fixed.flops(*SHAPE, True)
    assert module.tune(q, k, v, causal=False) == {}  # bidirectional: nothing to run
    assert variants.create(name, chunk_size=32).tune(q, k, v, causal=True) == {
        "chunk_size": 32, "chunk_size_tuned": False,
    }  # fmt: skip
