"""One RL step, ours against TRL's GRPOTrainer: same model, task, batch and max_new_tokens.

    pip install -e '.[bench]'                                  # TRL, a benchmark-only extra
    python benchmarks/step_vs_trl.py                           # shipped tiny model: 32 prompts x 8, 16 tokens
    python benchmarks/step_vs_trl.py --model smollm2-135m-instruct --prompts 4 --n 4 --max-new-tokens 24
    python benchmarks/step_vs_trl.py --smoke                   # tiny, for the test suite
    python benchmarks/step_vs_trl.py --model smollm2-135m-instruct --lora   # both with the same LoRA adapter

Both start from the same weights (``--model``: ``default`` is the shipped warm start on 3-digit
addition; a named model, ``.gguf`` file or checkpoint directory trains on ``word_arithmetic``)
with GRPO settings: no KL, one update per rollout batch, lr 1e-4 (1e-6 for a real model),
temperature 1, no top-k, full fine-tuning (``--lora``: both train the same LoRA adapter through peft,
rank ``--lora-rank`` 16, alpha ``--lora-alpha`` 32, on the workbench's default target modules, the
attention and MLP projections; TRL takes it as ``peft_config``), no gradient checkpointing (TRL turns it on by default),
no evaluation or checkpoints. A model with a chat template gets the same chat-formatted prompts in
both (TRL: conversational prompts, which it wraps in the template). Each trainer runs in its own
subprocess, so its peak memory is its own (CUDA ``max_memory_allocated``, else peak resident set).
The first step is a warm-up and is not counted; the table shows median seconds per step, the
rollout phase (generation + rewards + old-policy scoring) and the update phase, and generated
tokens per second of each, as ratios TRL / ours measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time


def _model_path(model: str) -> str:
    from workbench.training.config import DEFAULT_INIT

    return DEFAULT_INIT if model == "default" else model


def lora_options(a) -> dict:
    """The adapter both trainers train with ``--lora`` (empty without): rank, alpha, target modules."""
    from workbench.models.lora import DEFAULT_TARGET_MODULES

    if not a.lora:
        return {}
    return {"lora_rank": a.lora_rank, "lora_alpha": a.lora_alpha, "lora_target_modules": list(DEFAULT_TARGET_MODULES)}


def peft_config(a):
    """TRL's ``peft_config`` for the same adapter as ours (``None`` without ``--lora``)."""
    options = lora_options(a)
    if not options:
        return None
    from peft import LoraConfig

    return LoraConfig(
        r=options["lora_rank"],
        lora_alpha=options["lora_alpha"],
        target_modules=options["lora_target_modules"],
        lora_dropout=0.0,
        task_type="CAUSAL_LM",
    )


def our_config(a, out: str) -> dict:
    return dict(
        model=a.model,
        task=a.task,
        algorithm="grpo",
        dynamic_sampling=False,
        overlong_shaping=False,
        steps=a.steps,
        prompts_per_step=a.prompts,
        group_size=a.n,
        max_new_tokens=a.max_new_tokens,
        lr=a.lr,
        eval_every=10**6,
        save_every=10**6,
        log_samples_every=10**6,
        device=a.device,
        output_dir=out,
        seed=0,
        drop_finished=a.drop_finished,
        **lora_options(a),
    )


def ours(a, out: str) -> list[dict]:
    from workbench.training.trainer import Trainer

    rows = []
    trainer = Trainer(our_config(a, out), overwrite=True, progress=False)
    for step in range(1, a.steps + 1):
        rows.append(trainer.train_step(step))
    if hasattr(trainer, "close"):  # releases the run directory's lock
        trainer.close()
    return [
        {
            "step": r["time_step"],
            # TRL's rollout phase (_generate_and_score_completions) holds generation, rewards and any
            # no-grad scoring pass; its update is forward, loss, backward, optimizer step
            "rollout": r["time_rollout"] + r.get("time_reward", 0.0) + r.get("time_score", 0.0),
            "update": r["time_update"] + r.get("time_advantage", 0.0),
            "tokens": r["generated_tokens"],
        }
        for r in rows
    ]


def trl(a, out: str) -> list[dict]:
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from workbench.models.load import load_model
    from workbench.tasks import get_task

    task = get_task(a.task)
    model, tokenizer = load_model(_model_path(a.model))
    chat = bool(getattr(tokenizer, "chat_template", None))
    examples = {e.prompt: e for e in task.generate("train", a.prompts * (a.steps + 1), seed=0)}
    rows_in = [{"prompt": [{"role": "user", "content": p}] if chat else p} for p in examples]
    dataset = Dataset.from_list(rows_in)

    def text(x):  # a conversational prompt or completion is a list of messages
        return x[-1]["content"] if isinstance(x, list) else x

    def reward(prompts, completions, **_):
        return [task.reward(examples[text(p)], text(c)) for p, c in zip(prompts, completions)]

    args = GRPOConfig(
        output_dir=out,
        per_device_train_batch_size=a.prompts * a.n,
        num_generations=a.n,
        max_completion_length=a.max_new_tokens,
        max_steps=a.steps,
        learning_rate=a.lr,
        lr_scheduler_type="constant",
        beta=0.0,
        loss_type="grpo",
        temperature=1.0,
        top_k=0,
        top_p=1.0,
        gradient_checkpointing=False,
        use_cpu=a.device == "cpu",
        bf16=a.device != "cpu",
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        disable_dropout=True,
        shuffle_dataset=False,
        dataloader_num_workers=0,
        max_grad_norm=1.0,
        seed=0,
    )
    rows, phase = [], {}

    class Clock(TrainerCallback):
        def on_step_begin(self, *args, **kwargs):
            phase["start"], phase["rollout"] = time.perf_counter(), 0.0

        def on_step_end(self, *args, **kwargs):
            rows.append({"step": time.perf_counter() - phase["start"], "rollout": phase["rollout"]})

        def on_log(self, _args, _state, _control, logs=None, **kwargs):
            if logs and "completions/mean_length" in logs and rows:
                rows[-1]["tokens"] = logs["completions/mean_length"] * a.prompts * a.n

    trainer = GRPOTrainer(
        model=model,
        reward_funcs=reward,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        callbacks=[Clock()],
        peft_config=peft_config(a),
    )
    generate = trainer._generate_and_score_completions

    def timed(*args, **kwargs):
        t = time.perf_counter()
        result = generate(*args, **kwargs)
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


def _peak_mb(device: str) -> float:
    if device == "cuda":
        import torch

        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_one(a) -> dict:
    """One trainer in this process (called in a subprocess): its summary and peak memory."""
    with tempfile.TemporaryDirectory() as tmp:
        rows = (ours if a.only == "ours" else trl)(a, f"{tmp}/{a.only}")
    return {**summarize(rows), "peak_mb": _peak_mb(a.device)}


def measure(name: str, argv: list[str]) -> dict:
    out = subprocess.run([sys.executable, __file__, *argv, "--only", name], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--model",
        default="default",
        help="'default' (the shipped warm start), a named model such as "
        "smollm2-135m-instruct, a .gguf file or a checkpoint directory",
    )
    p.add_argument("--task", default=None, help="default: addition for the shipped model, else word_arithmetic")
    p.add_argument("--prompts", type=int, default=32)
    p.add_argument("--n", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--lr", type=float, default=None, help="default: 1e-4 for the shipped model, 1e-6 otherwise")
    p.add_argument("--device", default="cuda" if __import__("torch").cuda.is_available() else "cpu")
    p.add_argument("--smoke", action="store_true", help="2 prompts x 2, 2 steps")
    p.add_argument("--lora", action="store_true", help="both trainers train the same LoRA adapter (peft)")
    p.add_argument("--lora-rank", type=int, default=16, help="the adapter's rank with --lora")
    p.add_argument("--lora-alpha", type=float, default=32.0, help="the adapter's alpha with --lora")
    p.add_argument(
        "--drop-finished",
        action="store_true",
        help="ours samples with its own decode loop, finished replies leaving the decode batch (drop_finished)",
    )
    p.add_argument("--only", choices=["ours", "trl"], help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.smoke:
        a.prompts, a.n, a.steps = 2, 2, 2
    a.task = a.task or ("addition" if a.model == "default" else "word_arithmetic")
    a.lr = a.lr if a.lr is not None else (1e-4 if a.model == "default" else 1e-6)
    return a


def main(argv=None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    a = parse_args(argv)
    if a.only:
        print(json.dumps(run_one(a)))
        return {}
    argv = [x for x in argv if x != "--smoke"] + ["--prompts", str(a.prompts), "--n", str(a.n), "--steps", str(a.steps)]
    results = {"ours": measure("ours", argv), "trl": measure("trl", argv)}
    print(
        f"model {a.model}, task {a.task}: {a.prompts} prompts x {a.n} samples, max_new_tokens {a.max_new_tokens}, "
        f"{a.steps} steps (first not counted), device {a.device}"
        + (f", LoRA rank {a.lora_rank} alpha {a.lora_alpha}" if a.lora else ", full fine-tuning")
        + (", ours with drop_finished" if a.drop_finished else "")
    )
    print(
        f"{'':6} {'s/step':>8} {'rollout s':>10} {'update s':>9} {'tokens':>8} {'rollout tok/s':>14} "
        f"{'update tok/s':>13} {'peak MB':>8}"
    )
    for name, r in results.items():
        print(
            f"{name:6} {r['step']:8.3f} {r['rollout']:10.3f} {r['update']:9.3f} {r['tokens']:8.0f} "
            f"{r['rollout_tok_s']:14.0f} {r['update_tok_s']:13.0f} {r['peak_mb']:8.0f}"
        )
    o, t = results["ours"], results["trl"]
    print(
        f"ratio TRL/ours: step {t['step'] / o['step']:.2f}x, rollout {t['rollout'] / o['rollout']:.2f}x, "
        f"update {t['update'] / o['update']:.2f}x, peak memory {t['peak_mb'] / o['peak_mb']:.2f}x"
    )
    print("json:", json.dumps(results))
    return results


if __name__ == "__main__":
    main()
