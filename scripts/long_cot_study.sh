#!/usr/bin/env bash
# The long-CoT stability study of notebook 07, CPU-sized: for each chain length, a warm start
# (runs/long_cot/, rebuilt by this script, not shipped; its summary is copied to
# data/results/long_cot/warmstarts/), then GRPO, DAPO, GTPO and GRPO-S from it (results in
# data/results/long_cot/runs/<setting>/<algorithm>-s<seed>). Resumable: re-running skips
# finished warm starts and finished cells; lengths run one after another, shortest first.
#   LENGTHS="4 8 16" SEEDS=0,1 bash scripts/long_cot_study.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
LENGTHS=${LENGTHS:-"4 8 16"}
SEEDS=${SEEDS:-0,1}
mkdir -p data/results/long_cot/warmstarts
for k in $LENGTHS; do
    out=runs/long_cot/warm-chain$k
    if [ ! -f "$out/warmstart.json" ]; then
        $PY -m workbench warmstart --task chain --task-params "{\"steps\": $k}" --target-accuracy 0.3 \
            --max-steps 1500 --eval-every 100 --eval-size 64 --out "$out"
    fi
    cp "$out/warmstart.json" "data/results/long_cot/warmstarts/chain$k.json"
    budget=$((9 * k + 4))
    $PY -m workbench study --root data/results/long_cot --algorithms grpo,dapo,gtpo,grpo_s --seeds "$SEEDS" \
        --setting "{\"task\": \"chain\", \"task_params\": {\"steps\": $k}, \"model\": \"$out\", \"max_new_tokens\": $budget}" \
        --steps 40 --prompts-per-step 16 --group-size 8 --lr 1e-4 --eval-every 10 --eval-size 64 --log-samples-every 20
done
