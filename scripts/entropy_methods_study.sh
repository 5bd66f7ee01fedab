#!/usr/bin/env bash
# The entropy-method family side by side on the embedded default (notebook 09): GRPO, DAPO, GTPO,
# GRPO-S, the forking-token mask, Clip-Cov, KL-Cov, the entropy advantage, ERC, GTPO/GRPO-S on
# surprisal, and DAPO with the entropy bonus on a linear schedule and with the adaptive
# controller; 5 seeds each; and GRPO-S with the token-level loss (grpo_s_token) as a diagnostic.
# One update schedule for all: 16 prompts x 8 replies per step, 4 mini-batches per batch (4
# optimizer steps per rollout, so the policy moves away from the behaviour policy and the
# ratio-based methods, KL-Cov and ERC, act; with one mini-batch the ratio is 1). Held-out
# greedy accuracy and pass@k (4 samples per problem) on 256 problems at steps 0, 20 and 40.
# Results in data/results/entropy_methods/runs/<setting>/<algorithm>-s<seed>.
# Resumable: re-running skips finished cells and continues an interrupted one.
#   bash scripts/entropy_methods_study.sh            # one process
#   JOBS=2 bash scripts/entropy_methods_study.sh     # two processes (seed subsets), one table at the end
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
ROOT=${ROOT:-data/results/entropy_methods}
ALGORITHMS=grpo,dapo,gtpo,grpo_s,dapo_forking,clip_cov,kl_cov,entropy_adv,erc,gtpo_surprisal,grpo_s_surprisal
LINEAR='{"entropy_coef": 0.01, "entropy_coef_final": 0.0}'
ADAPTIVE='{"entropy_target": 0.25}'
COMMON=(--steps 40 --prompts-per-step 16 --group-size 8 --lr 1e-4 --minibatches 4 --eval-every 20
        --eval-size 256 --eval-samples 4 --log-samples-every 20 --log-groups 1)
study() { "$PY" -m workbench study --root "$ROOT" "${COMMON[@]}" "$@"; }
# GRPO-S with the token-level loss (grpo_s_token): tells GRPO-S's sequence-level ratio from its advantages
DIAGNOSTIC=grpo_s_token
part_a() { study --algorithms "$ALGORITHMS" --seeds 0,1,2 && study --algorithms "$DIAGNOSTIC" --seeds 0,1,2; }
part_b() {
    study --algorithms "$ALGORITHMS" --seeds 3,4 && study --algorithms dapo --seeds 0,1,2,3,4 --setting "$LINEAR" --setting "$ADAPTIVE" &&
        study --algorithms "$DIAGNOSTIC" --seeds 3,4
}
mkdir -p "$ROOT"
if [ "${JOBS:-1}" = 2 ]; then
    part_a > "$ROOT/part_a.log" 2>&1 & a=$!
    part_b > "$ROOT/part_b.log" 2>&1 & b=$!
    wait $a && wait $b
    rm -f "$ROOT/part_a.log" "$ROOT/part_b.log"
else
    part_a && part_b
fi
# every cell is done: these only summarise them, into one results.csv
study --algorithms "$ALGORITHMS,$DIAGNOSTIC" --seeds 0,1,2,3,4 > /dev/null
study --algorithms dapo --seeds 0,1,2,3,4 --setting '{}' --setting "$LINEAR" --setting "$ADAPTIVE" > /dev/null
"$PY" - "$ROOT" "$LINEAR" "$ADAPTIVE" <<'PY'
import json, sys
root, linear, adaptive = sys.argv[1:]
manifest = {
    "command": "JOBS=2 bash scripts/entropy_methods_study.sh",
    "note": "GRPO-S with the token-level loss (grpo_s_token) as a diagnostic beside GRPO-S; embedded default (tiny model, addition), 40 steps of 16 prompts x 8, lr 1e-4, 4 mini-batches per "
            "batch, each algorithm with its registry defaults (dynamic sampling where its paper uses it); DAPO with "
            f"the entropy bonus as settings {linear} (linear schedule) and {adaptive} (adaptive controller, TRL's "
            "step and bounds; target 0.25 because the tiny model starts at about 0.35 nats and TRL's 0.2 would not "
            "engage within 40 steps); eval 256 held-out problems, greedy and 4 samples each, at steps 0, 20, 40",
}
open(f"{root}/manifest.json", "w").write(json.dumps(manifest, indent=2) + "\n")
PY
