#!/usr/bin/env bash
# shellcheck disable=SC2317 # the stage functions run through `bash -c` (exported), unseen here
# The GPU check in one command (docs/gpu.md): bash scripts/gpu_run.sh OUT_DIR
#
# On a CUDA machine, from a checkout with gpu_wheels/ beside it (scripts/gpu_prepare.py makes it
# where PyPI is reachable) or with attnbench already installed: installs the missing wheels with
# no index, runs the CUDA-marked tests, the gpu_smoke sweep, the sdpa_math baseline, the decode_gpu
# sweep, the speed table in bf16 and fp32 and the report, then leaves in OUT_DIR at most 8 files of
# at most 16 MiB:
#   results.csv, results.tar.gz (every row, run log, report and figure), report.md, speed.md,
#   environment.txt (GPU name, driver, clocks, versions), gpu_run.log and two figures.
# Each stage has its own time limit (under 10 minutes in all); a failed or cut stage is
# logged and the run goes on. Exit status: 2 = usage or no CUDA device (nothing run),
# 1 = the install failed or a stage failed, 0 = every stage passed.
# Settings (environment): PYTHON (default python3), GPU_WHEELS (default gpu_wheels/), GPU_RUN_WORK
# (full results, default results/gpu_smoke/<UTC time>), the stage limits below, SMOKE_ARGS (extra
# Hydra overrides for both smoke sweeps), DECODE_ARGS (the same for the decode sweep) and
# GPU_RUN_NO_CUDA_CHECK=1, which runs the flow on a CPU to
# test this script (every point then fails; tests/test_gpu_prep.py does that).
set -uo pipefail # no -e: one failing stage must not stop the others

if (($# != 1)) || [[ -z $1 ]]; then
    echo "gpu_run.sh: usage: bash scripts/gpu_run.sh OUT_DIR (on a machine with a CUDA device)" >&2
    exit 2
fi
case $1 in /*) out=$1 ;; *) out=$PWD/$1 ;; esac
cd "$(dirname "$0")/.." || exit 2
root=$PWD
py=${PYTHON:-python3}

# Refuse before touching anything when torch sees no CUDA device.
if [[ ${GPU_RUN_NO_CUDA_CHECK:-} != 1 ]] && ! why=$("$py" -c '
import sys
try:
    import torch
except Exception as exc:
    sys.exit(f"torch is not importable by {sys.executable} ({type(exc).__name__}: {exc})")
if not torch.cuda.is_available():
    sys.exit(f"torch {torch.__version__} sees no CUDA device")
' 2>&1); then
    echo "gpu_run.sh: no CUDA device: ${why##*$'\n'}; nothing was run" >&2
    exit 2
fi

# Stage limits in seconds (override from the environment); they add up to 585. Measured on an
# H100: the CUDA tests 89-103 s, the fp32 sweep 155 s, a speed table 42-60 s; the decode sweep
# has not run on a GPU yet (its limit keeps the batch-1 points, which come first).
: "${INSTALL_S:=30}" "${ENV_S:=20}" "${TESTS_S:=130}" "${SMOKE_S:=170}" "${MATH_S:=20}"
: "${DECODE_S:=60}" "${SPEED_S:=60}" "${REPORT_S:=20}" "${BUNDLE_S:=15}"
# The speed table's readings: short, as the sweep's (each call timed alone after an L2 flush).
: "${SPEED_ARGS:=--min-run-time 0.05 --rounds 2}"
wheels=${GPU_WHEELS:-$root/gpu_wheels}
stamp=$(date -u +%Y-%m-%d_%H-%M-%S)
work=${GPU_RUN_WORK:-$root/results/gpu_smoke/$stamp} # the full folder stays on the machine
read -r -a smoke_args <<<"${SMOKE_ARGS:-}"
read -r -a decode_args <<<"${DECODE_ARGS:-}"
sweep=$work/sweep
mkdir -p "$out" "$sweep" || exit 2
log=$out/gpu_run.log
exec > >(tee -a "$log") 2>&1
tee_pid=$!
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1

failed=()
stage() { # stage NAME SECONDS COMMAND...: run under a time limit, log the outcome, go on
    local name=$1 limit=$2 rc=0 start=$SECONDS
    shift 2
    if [[ ,${GPU_RUN_SKIP:-}, == *",${name%% *},"* ]]; then # skipped by its first word
        echo "=== $name: skipped (GPU_RUN_SKIP=$GPU_RUN_SKIP)"
        return 0
    fi
    echo "=== [$(date -u +%H:%M:%S)] $name (limit ${limit}s)"
    # bash -c: timeout runs programs, and most stages are the functions exported below
    timeout --kill-after=10 "$limit" bash -c '"$@"' "$name" "$@" || rc=$?
    local took=$((SECONDS - start))
    if ((rc == 124 || rc == 137)); then
        echo "=== $name: CUT at its ${limit}s limit"
        failed+=("$name (cut at ${limit}s)")
    elif ((rc != 0)); then
        echo "=== $name: FAILED (exit $rc) after ${took}s"
        failed+=("$name (exit $rc)")
    else
        echo "=== $name: ok in ${took}s"
    fi
    return "$rc"
}
pip_offline() { "$py" -m pip install -q --no-index --find-links "$wheels" --no-cache-dir "$@"; }
ready() { "$py" -c 'import hydra, omegaconf, harness.app.main' 2>/dev/null; }
attnbench() { # the console script, without relying on PATH
    "$py" -c 'import sys; from harness.app.main import cli; sys.argv[0] = "attnbench"; cli()' "$@"
}

install() {
    if [[ ! -d $wheels ]]; then
        ready && { echo "no gpu_wheels/: using the installed attnbench"; return 0; }
        echo "no gpu_wheels/ and attnbench is not importable: run scripts/gpu_prepare.py where"
        echo "PyPI is reachable and carry gpu_wheels/, or pip install -e . on a networked machine"
        return 1
    fi
    # Only what is missing is installed: pip keeps installed versions that satisfy the pins.
    pip_offline hydra-core omegaconf tqdm || return
    if compgen -G "$wheels/fla_core-*.whl" >/dev/null; then # retention/deltanet on fla's kernels
        pip_offline fla-core einops || echo "fla-core did not install; retention/deltanet use the suite's engine"
    fi
    if compgen -G "$wheels/xformers-*.whl" >/dev/null; then
        pip_offline xformers || echo "xformers did not install; its points will say why"
    fi
    # Editable, so the run measures exactly the tree that travelled; the wheel is the fallback.
    pip_offline --no-deps --no-build-isolation -e . ||
        pip_offline --no-deps --force-reinstall "$wheels"/attnbench-*.whl || return
    ready
}

environment() { # GPU name, driver, clocks and versions
    {
        echo "# gpu_run.sh $stamp UTC on $(hostname)"
        echo "## nvidia-smi --query-gpu"
        nvidia-smi --format=csv --query-gpu=name,driver_version,vbios_version,pci.bus_id,\
memory.total,power.limit,clocks.sm,clocks.mem,clocks.max.sm,clocks.max.mem,\
clocks.applications.graphics,clocks.applications.memory,persistence_mode,temperature.gpu
        echo "## torch"
        "$py" - <<'PY'
import torch

p = torch.cuda.get_device_properties(0)
l2 = getattr(p, "L2_cache_size", 0) / 2**20
cudnn = torch.backends.cudnn.version()
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {cudnn}")
print(f"{p.name}: capability {p.major}.{p.minor}, {p.multi_processor_count} SMs, "
      f"{p.total_memory / 2**30:.1f} GiB, L2 {l2:.0f} MiB")
cuda = torch.backends.cuda
print(f"sdp enabled: flash {cuda.flash_sdp_enabled()}, efficient "
      f"{cuda.mem_efficient_sdp_enabled()}, cudnn {cuda.cudnn_sdp_enabled()}, math "
      f"{cuda.math_sdp_enabled()}")
PY
        echo "## packages"
        "$py" -m pip list 2>/dev/null |
            grep -i -E '^(torch|triton|numpy|pandas|hydra-core|omegaconf|xformers|attnbench) '
        echo "## prepared wheels"
        cat "$wheels/PREPARED.txt" 2>/dev/null
        echo "## nvidia-smi -q -d CLOCK,POWER,PERFORMANCE"
        nvidia-smi -q -d CLOCK,POWER,PERFORMANCE
        echo "## nvidia-smi"
        nvidia-smi
        echo "## xformers" # last: importing it can take longer than the stage (seen on an H100)
        cat "$wheels/XFORMERS.txt" 2>/dev/null
        timeout 10 "$py" -m xformers.info 2>&1 | head -n 60
    } >>"$out/environment.txt" 2>&1
    return 0 # a record: what could not be read says so in the file
}

cuda_tests() {
    local rc=0
    # a test file broken by unrelated work must not hide the CUDA tests of the others
    local opts=(-q -p no:cacheprovider --continue-on-collection-errors --durations=12)
    "$py" -m pytest "${opts[@]}" -m cuda tests || rc=$?
    if ((rc == 5)); then # no test carries the marker yet: run the ones named for CUDA
        echo "no test is marked cuda; running the tests whose names mention cuda"
        rc=0
        "$py" -m pytest "${opts[@]}" -k cuda tests || rc=$?
    fi
    return "$rc"
}

speed() { # speed DTYPE: the speed table on the GPU, when speedcheck can run there
    local help args
    read -r -a args <<<"$SPEED_ARGS"
    help=$("$py" -m harness.measure.speedcheck --help)
    if [[ $help != *--device* || $help != *--dtype* ]]; then
        echo "harness.measure.speedcheck has no --device/--dtype flags: its table would time" \
            "the CPU, so it is not run" | tee -a "$work/speed.md"
        return 0
    fi
    # Its own limit, 5 s inside the stage's, and the table kept whatever the exit status: on an
    # H100 the bf16 table was printed, but the stage was cut before it was copied.
    local rc=0
    timeout --kill-after=2 "$((SPEED_S - 5))" "$py" -m harness.measure.speedcheck --device cuda \
        --dtype "$1" --seq-len 8192 --heads 16 "${args[@]}" --out "$work/speed_$1.md" || rc=$?
    cat "$work/speed_$1.md" >>"$work/speed.md" 2>/dev/null || echo "no speed table for $1"
    return "$rc"
}

bundle() { # at most 8 files of at most 16 MiB in OUT
    "$py" -c 'import sys; from pathlib import Path; from harness.app.callbacks import aggregate
aggregate(Path(sys.argv[1]))' "$sweep" || echo "could not aggregate the rows"
    cp "$sweep/results.csv" "$out/" 2>/dev/null || echo "no results.csv"
    cp "$work/report/report.md" "$out/" 2>/dev/null || echo "no report.md"
    cp "$work/speed.md" "$out/" 2>/dev/null || echo "no speed.md"
    local picked=0 pattern fig
    for pattern in 'time_fwd_bwd*.png' 'memory_fwd_bwd*.png' 'time_fwd*.png' '*.png'; do
        for fig in "$work"/report/$pattern; do
            if ((picked < 2)) && [[ -f $fig && ! -e $out/$(basename "$fig") ]]; then
                cp "$fig" "$out/" && picked=$((picked + 1))
            fi
        done
    done
    tar -czf "$out/results.tar.gz" -C "$work" . || return
    local f
    for f in "$out"/*; do
        if (($(stat -c %s "$f") > 16 * 1024 * 1024)); then
            echo "$(basename "$f") is over 16 MiB: removed (the full folder is $work)"
            rm -f "$f"
        fi
    done
}

export py out root wheels stamp work sweep SPEED_ARGS SPEED_S
export -f pip_offline ready attnbench install environment cuda_tests speed bundle

finish() { # finish STATUS: let tee write the last lines of the log, then exit
    exec 1>&- 2>&-
    wait "$tee_pid" 2>/dev/null
    exit "$1"
}

echo "gpu_run.sh: $(date -u) in $root; full results in $work"
if ! stage install "$INSTALL_S" install; then
    echo "gpu_run.sh: cannot go on without the harness"
    stage environment "$ENV_S" environment
    finish 1
fi
stage environment "$ENV_S" environment
stage "cuda tests" "$TESTS_S" cuda_tests
# The report is drawn once, after both sweeps (hence report=false in each).
stage "gpu_smoke sweep" "$SMOKE_S" attnbench +experiment=gpu_smoke "hydra.sweep.dir=$sweep" \
    ++hydra.callbacks.sweep.report=false "${smoke_args[@]}"
stage "sdpa_math baseline" "$MATH_S" attnbench +experiment=gpu_smoke variant=sdpa_math \
    seq_len=1024,4096 "hydra.sweep.dir=$sweep" ++hydra.callbacks.sweep.report=false \
    "${smoke_args[@]}"
stage "decode_gpu sweep" "$DECODE_S" attnbench +experiment=decode_gpu \
    "hydra.sweep.dir=$sweep/decode" ++hydra.callbacks.sweep.report=false "${decode_args[@]}"
stage "speed table bf16" "$SPEED_S" speed bfloat16
stage "speed table fp32" "$SPEED_S" speed float32
stage report "$REPORT_S" "$py" -m harness.report.build "$sweep" --out "$work/report" --no-heatmap
echo "=== summary: ${#failed[@]} stage(s) failed or cut${failed[*]:+: ${failed[*]}}"
stage bundle "$BUNDLE_S" bundle
ls -l "$out"
finish $((${#failed[@]} == 0 ? 0 : 1))
