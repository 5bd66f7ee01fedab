"""One RL step, ours against TRL's GRPOTrainer: same model, task, batch and max_new_tokens.

    pip install -e '.[bench]'                      # TRL, a benchmark-only extra
    python benchmarks/step_vs_trl.py               # 32 prompts x 8, 16 new tokens, 5 steps
    python benchmarks/step_vs_trl.py --smoke       # tiny, for the test suite

Both start from the shipped warm start (3-digit addition, the character tokenizer) with GRPO
settings (no KL, one update per rollout batch, lr 1e-4, temperature 1, no top-k), without
gradient checkpointing (TRL turns it on by default) and without evaluation or checkpoints.
The first step is a warm-up and is not counted; the table shows median seconds per step,
the rollout phase (generation + rewards + old-policy scoring) and the update phase, and
generated tokens per second of each, as ratios TRL / ours measured in the same process.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time


def ours(prompts: int, n: int, max_new_tokens: int, steps: int, out: str) -> list[dict]:
    from workbench.trainer import Trainer

    rows = []
    config = dict(algorithm="grpo", dynamic_sampling=False, steps=steps, prompts_per_step=prompts, group_size=n,
                  max_new_tokens=max_new_tokens, lr=1e-4, eval_every=10**6, save_every=10**6, log_samples_every=10**6,
                  output_dir=out, seed=0)
    Trainer(config, overwrite=True, progress=False, callback=lambda step, row: rows.append(row)).train()
    return [{"step": r["time_step"], "rollout": r["time_rollout"] + r.get("time_score", 0.0),
             "update": r["time_update"], "tokens": r["generated_tokens"]} for r in rows]


def trl(prompts: int, n: int, max_new_tokens: int, steps: int, out: str, device: str) -> list[dict]:
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from workbench.config import DEFAULT_INIT
    from workbench.models import load_model
    from workbench.tasks import get_task

    task = get_task("addition")
    model, tokenizer = load_model(DEFAULT_INIT)
    examples = {e.prompt: e for e in task.generate("train", prompts * (steps + 1), seed=0)}
    dataset = Dataset.from_list([{"prompt": p} for p in examples])

    def reward(prompts, completions, **_):
        return [task.reward(examples[p], c) for p, c in zip(prompts, completions)]

    args = GRPOConfig(
        output_dir=out, per_device_train_batch_size=prompts * n, num_generations=n,
        max_completion_length=max_new_tokens, max_steps=steps, learning_rate=1e-4, lr_scheduler_type="constant",
        beta=0.0, loss_type="grpo", temperature=1.0, top_k=0, top_p=1.0, gradient_checkpointing=False,
        use_cpu=device == "cpu", bf16=device != "cpu", report_to="none", save_strategy="no", logging_steps=1,
        disable_dropout=True, shuffle_dataset=False, dataloader_num_workers=0, max_grad_norm=1.0, seed=0)
    rows, phase = [], {}

    class Clock(TrainerCallback):
        def on_step_begin(self, *a, **k):
            phase["start"], phase["rollout"] = time.perf_counter(), 0.0

        def on_step_end(self, *a, **k):
            rows.append({"step": time.perf_counter() - phase["start"], "rollout": phase["rollout"]})

        def on_log(self, _args, _state, _control, logs=None, **k):
            if logs and "completions/mean_length" in logs and rows:
                rows[-1]["tokens"] = logs["completions/mean_length"] * prompts * n

    trainer = GRPOTrainer(model=model, reward_funcs=reward, args=args, train_dataset=dataset,
                          processing_class=tokenizer, callbacks=[Clock()])
    generate = trainer._generate_and_score_completions

    def timed(*a, **k):
        t = time.perf_counter()
        result = generate(*a, **k)
        phase["rollout"] += time.perf_counter() - t
        return result

    trainer._generate_and_score_completions = timed
    trainer.train()
    for r in rows:
        r["update"] = r["step"] - r["rollout"]
    return rows


def summarize(rows: list[dict]) -> dict:
    rows = rows[1:] or rows  # the first step warms up
    med = {k: statistics.median(r[k] for r in rows) for k in ("step", "rollout", "update")}
    tokens = statistics.median(r.get("tokens", float("nan")) for r in rows)
    return {**med, "tokens": tokens, "rollout_tok_s": tokens / med["rollout"], "update_tok_s": tokens / med["update"]}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--prompts", type=int, default=32)
    p.add_argument("--n", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--device", default="cuda" if __import__("torch").cuda.is_available() else "cpu")
    p.add_argument("--smoke", action="store_true", help="2 prompts x 2, 2 steps")
    a = p.parse_args(argv)
    if a.smoke:
        a.prompts, a.n, a.steps = 2, 2, 2
    with tempfile.TemporaryDirectory() as tmp:
        results = {"ours": summarize(ours(a.prompts, a.n, a.max_new_tokens, a.steps, f"{tmp}/ours")),
                   "trl": summarize(trl(a.prompts, a.n, a.max_new_tokens, a.steps, f"{tmp}/trl", a.device))}
    print(f"{a.prompts} prompts x {a.n} samples, max_new_tokens {a.max_new_tokens}, {a.steps} steps "
          f"(first not counted), device {a.device}")
    print(f"{'':6} {'s/step':>8} {'rollout s':>10} {'update s':>9} {'tokens':>8} {'rollout tok/s':>14} {'update tok/s':>13}")
    for name, r in results.items():
        print(f"{name:6} {r['step']:8.3f} {r['rollout']:10.3f} {r['update']:9.3f} {r['tokens']:8.0f} "
              f"{r['rollout_tok_s']:14.0f} {r['update_tok_s']:13.0f}")
    o, t = results["ours"], results["trl"]
    print(f"ratio TRL/ours: step {t['step'] / o['step']:.2f}x, rollout {t['rollout'] / o['rollout']:.2f}x, "
          f"update {t['update'] / o['update']:.2f}x")


if __name__ == "__main__":
    main()
