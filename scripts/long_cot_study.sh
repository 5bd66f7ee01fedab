#!/usr/bin/env bash
# The long-CoT stability study of notebook 07, CPU-sized: for each chain length, a warm start
# (runs/long_cot/, rebuilt by this script, not shipped; its summary is copied to
# data/results/long_cot/warmstarts/), then GRPO, DAPO, GTPO and GRPO-S from it (results in
# data/results/long_cot/runs/<setting>/<algorithm>-s<seed>). Resumable: re-running skips
# finished warm starts and finished cells, and an interrupted warm start or run continues where
# it stopped; lengths run one after another, in the order given.
#   LENGTHS="4 8 16" SEEDS=0,1 bash scripts/long_cot_study.sh
#   LENGTHS=70 SEEDS=0 bash scripts/long_cot_study.sh      # >= 500 reasoning tokens; needs chain 16 first
# Up to 16 operations each warm start trains a fresh model (batch 64) and RL runs 40 steps of
# 16 prompts x 8. Longer chains are a curriculum: the warm start continues from the 16-operation
# model (a fresh model learns nothing there in the time a CPU allows), with batch 16; RL runs 20
# steps of 8 prompts x 8 with the static KV cache (preallocated; the growing dynamic cache is slower here at 634 tokens).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
LENGTHS=${LENGTHS:-"4 8 16"}
SEEDS=${SEEDS:-0,1}
mkdir -p data/results/long_cot/warmstarts
for k in $LENGTHS; do
    out=runs/long_cot/warm-chain$k
    budget=$((9 * k + 4))
    setting="\"task\": \"chain\", \"task_params\": {\"steps\": $k}, \"model\": \"$out\", \"max_new_tokens\": $budget"
    if [ "$k" -le 16 ]; then
        warm=(--target-accuracy 0.3 --max-steps 1500 --eval-every 100 --eval-size 64)
        rl=(--steps 40 --prompts-per-step 16 --eval-every 10 --log-samples-every 20)
    else
        warm=(--init runs/long_cot/warm-chain16 --batch-size 16 --target-accuracy 0.1 --max-steps 8000
              --eval-every 200 --eval-size 32)
        rl=(--steps 20 --prompts-per-step 8 --eval-every 5 --log-samples-every 10)
        setting="$setting, \"generation_cache\": \"static\""
    fi
    if [ ! -f "$out/warmstart.json" ]; then
        $PY -m workbench warmstart --task chain --task-params "{\"steps\": $k}" "${warm[@]}" --out "$out"
    fi
    cp "$out/warmstart.json" "data/results/long_cot/warmstarts/chain$k.json"
    $PY -m workbench study --root data/results/long_cot --algorithms grpo,dapo,gtpo,grpo_s --seeds "$SEEDS" \
        --setting "{$setting}" "${rl[@]}" --group-size 8 --lr 1e-4 --eval-size 64
done
