"""Same metrics before and after a change of the engine: capture 3-step runs, then compare.

    python scripts/compare_runs.py capture /tmp/before     # with the old code
    python scripts/compare_runs.py capture /tmp/after      # with the new code
    python scripts/compare_runs.py compare /tmp/before /tmp/after

Every registered algorithm and a few settings (two-pass update, micro-batches, KL and entropy
terms, GROP and a format reward, the dual clip, a fresh model that keeps no group) run 3 steps
from the shipped warm start; metrics (timings left out), evaluations and samples (texts and
advantages) are compared at a relative tolerance of 1e-6. Captures taken before the metrics
covered every sampled group (no ``*_kept`` columns) are compared with the new ``*_kept``
columns where dynamic sampling made the two differ. Bits depend on the CPU type: compare two
captures made on the same machine. Run with OMP_NUM_THREADS=1.
"""

import json
import math
import sys
import tempfile
import warnings
from pathlib import Path

WARM = dict(
    model="default",
    prompts_per_step=3,
    group_size=4,
    max_new_tokens=16,
    eval_size=8,
    eval_every=2,
    save_every=2,
    log_samples_every=1,
    lr=1e-3,
    steps=3,
)
TINY = {
    "hidden_size": 32,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
    "intermediate_size": 64,
}
CASES = {
    name: {"algorithm": name}
    for name in (
        "grpo",
        "dr_grpo",
        "dapo",
        "gtpo",
        "gtpo_per_polarity",
        "gtpo_per_polarity_batch",
        "grpo_s",
        "grpo_s_token",
    )
}
CASES.update(
    {
        "gtpo_twopass": {"algorithm": "gtpo", "ppo_epochs": 2, "minibatches": 2, "dynamic_sampling": False},
        "grpo_micro": {"algorithm": "grpo", "micro_batch_size": 4},
        "gtpo_kl": {"algorithm": "gtpo", "beta_kl": 0.05, "entropy_coef": 0.01},
        "dapo_grop_format": {"algorithm": "dapo", "grop": True, "format_reward": 0.1, "max_sampling_rounds": 2},
        "grpo_s_seq_twopass": {"algorithm": "grpo_s", "ppo_epochs": 2, "dynamic_sampling": False, "clip_ratio_c": 3.0},
        "tiny_dapo": {"algorithm": "dapo", "model": "tiny", "max_sampling_rounds": 2, "model_params": TINY},
    }
)
NO_DYNAMIC_SAMPLING = {"grpo", "dr_grpo", "gtpo_twopass", "grpo_micro", "grpo_s_seq_twopass"}
MOVED = ("reward", "accuracy", "response_len_mean", "entropy")  # now over all sampled groups; *_kept: as before


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def capture(out: Path) -> None:
    from workbench.training.trainer import train

    warnings.simplefilter("ignore")
    out.mkdir(parents=True, exist_ok=True)
    for name, settings in CASES.items():
        with tempfile.TemporaryDirectory() as d:
            run = train({**WARM, **settings, "output_dir": d}, progress=False)
            metrics = [
                {k: v for k, v in r.items() if not k.startswith("time_") and k != "tokens_per_s"}
                for r in _read(run.path / "metrics.jsonl")
            ]
            data = {
                "metrics": metrics,
                "evals": _read(run.path / "eval.jsonl"),
                "samples": _read(run.path / "samples.jsonl"),
            }
            (out / f"{name}.json").write_text(json.dumps(data))
            print(name, "captured", flush=True)


def _close(a, b) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9) or (math.isnan(a) and math.isnan(b))
    return a == b


def _targets(case: str, key: str, old_layout: bool) -> list[str]:
    if not old_layout or key not in MOVED + ("response_len_max", "truncated_frac"):
        return [key]
    if case in NO_DYNAMIC_SAMPLING:
        return [key, f"{key}_kept"] if key in MOVED else [key]
    return [f"{key}_kept"] if key in MOVED else []


def compare(before: Path, after: Path) -> int:
    differences = 0
    for f in sorted(before.glob("*.json")):
        x, y = json.loads(f.read_text()), json.loads((after / f.name).read_text())
        old_layout = not any("groups_sampled" in r for r in x["metrics"])
        for part in ("metrics", "evals"):
            if len(x[part]) != len(y[part]):
                print(f.stem, part, "rows", len(x[part]), len(y[part]))
                differences += 1
            for ra, rb in zip(x[part], y[part]):
                for key, value in ra.items():
                    for target in _targets(f.stem, key, old_layout) if part == "metrics" else [key]:
                        if target not in rb or not _close(value, rb[target]):
                            print(f.stem, part, ra.get("step"), target, value, rb.get(target, "missing"))
                            differences += 1
        key = lambda s: (s["step"], s["prompt"], [(r["text"], r["advantages"]) for r in s["responses"]])  # noqa: E731
        if [key(s) for s in x["samples"]] != [key(s) for s in y["samples"]]:
            print(f.stem, "samples differ")
            differences += 1
    print("differences:", differences)
    return int(differences > 0)


if __name__ == "__main__":
    if sys.argv[1:2] == ["capture"] and len(sys.argv) == 3:
        capture(Path(sys.argv[2]))
    elif sys.argv[1:2] == ["compare"] and len(sys.argv) == 4:
        sys.exit(compare(Path(sys.argv[2]), Path(sys.argv[3])))
    else:
        sys.exit(__doc__)
