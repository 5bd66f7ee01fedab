"""Learning benchmark: from the shipped warm start, does every algorithm improve held-out accuracy?

    python benchmarks/learning.py                 # the README table (a few CPU minutes per algorithm)
    python benchmarks/learning.py --steps 5       # smoke size

For each algorithm: train on the default task (3-digit addition) for a fixed budget, and print
greedy held-out accuracy (256 problems) before and after, with the wall time.
"""

from __future__ import annotations

import argparse
import time

import pandas as pd

from workbench import train


def main(argv=None) -> pd.DataFrame:
    p = argparse.ArgumentParser()
    p.add_argument("--algorithms", default="grpo,dapo,gtpo,grpo_s")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--prompts-per-step", type=int, default=32)
    p.add_argument("--group-size", type=int, default=8)
    p.add_argument("--eval-size", type=int, default=256)
    p.add_argument("--out", default="runs/benchmark-learning")
    args = p.parse_args(argv)
    rows = []
    for name in args.algorithms.split(","):
        start = time.perf_counter()
        run = train(
            dict(
                algorithm=name,
                steps=args.steps,
                seed=args.seed,
                lr=args.lr,
                prompts_per_step=args.prompts_per_step,
                group_size=args.group_size,
                eval_size=args.eval_size,
                eval_every=max(1, args.steps // 3),
                save_every=args.steps,
                output_dir=f"{args.out}/{name}-s{args.seed}",
            ),
            overwrite=True,
            progress=False,
        )
        ev = run.evals
        before, after = ev.iloc[0], ev.iloc[-1]
        rows.append(
            {
                "algorithm": name,
                "steps": args.steps,
                "greedy_before": before["greedy_accuracy"],
                "greedy_after": after["greedy_accuracy"],
                "best_greedy": ev["greedy_accuracy"].max(),
                "sampled_before": before["sampled_accuracy"],
                "sampled_after": after["sampled_accuracy"],
                "gain_points": 100 * (after["greedy_accuracy"] - before["greedy_accuracy"]),
                "seconds": round(time.perf_counter() - start, 1),
            }
        )
        print(pd.DataFrame(rows[-1:]).to_string(index=False, header=len(rows) == 1), flush=True)
    table = pd.DataFrame(rows)
    print()
    print(table.to_markdown(index=False, floatfmt=".3f") if _has_tabulate() else table.to_string(index=False))
    return table


def _has_tabulate() -> bool:
    try:
        import tabulate  # noqa: F401

        return True
    except ImportError:
        return False


if __name__ == "__main__":
    main()
