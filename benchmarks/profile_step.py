"""Where the time of one RL step and of one evaluation goes, on a real model.

    python benchmarks/profile_step.py --model smollm2-135m-instruct   # 8 prompts x 8 replies, <= 64 new tokens
    python benchmarks/profile_step.py --smoke                         # tiny, for the test suite

One step is reproduced with the library calls the trainer makes, each phase timed alone (median
over ``--repeats`` after a warm-up; the weights do not change, AdamW runs with lr 0):

  rollout.prefill    each prompt through the model once (workbench.models.generation's shared prefill,
                     which fills the KV cache and computes no prompt logits)
  rollout.decode     model.generate from that cache: ``n`` sampled replies per prompt
  rewards            task.reward of every reply
  update.forward     token_stats_from_model with gradients (the hidden-state path; each group's
                     prompt computed once, its KV cache repeated to the group's replies)
  update.loss        advantages of the algorithm + policy_loss
  update.backward    loss.backward()
  update.optimizer   gradient clipping, AdamW step

then the trainer's own whole step (``Trainer.train_step``, median) and one evaluation
(``Trainer.evaluate``: greedy and sampled replies to ``--eval-size`` held-out problems, scored).
The update computes each group's prompt once (``token_stats_from_model(group_size=n)``, as the
trainer does); for reference, the same forward and backward with every reply's prompt computed
(``group_size=1``, the update before), and a check that both give the same log-probabilities:

  reference: update forward, every row's prompt     token_stats_from_model(group_size=1)
  reference: update backward, every row's prompt    the same loss, backward

Peak memory: CUDA ``max_memory_allocated``, else the process's peak resident set. The largest
float32 tensor with vocabulary columns created in the update is reported in rows (the update
never holds ``[tokens, vocab]`` float32 logits: a chunk of rows at a time).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import statistics
import tempfile
import time

import torch


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device):
    _sync(device)
    t = time.perf_counter()
    out = fn()
    _sync(device)
    return time.perf_counter() - t, out


def load(name: str, device: str):
    from workbench.models.load import load_model
    from workbench.training.config import DEFAULT_INIT

    model, tokenizer = load_model(DEFAULT_INIT if name == "default" else name)
    return model.to(device), tokenizer


class VocabRows(torch.utils._python_dispatch.TorchDispatchMode):
    """Largest number of rows of a new float32 tensor with ``vocab`` columns (views excluded)."""

    def __init__(self, vocab):
        super().__init__()
        self.vocab, self.rows = vocab, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {a.untyped_storage().data_ptr() for a in args if isinstance(a, torch.Tensor)}
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if (
                isinstance(t, torch.Tensor)
                and t.dtype == torch.float32
                and t.dim() >= 1
                and t.shape[-1] == self.vocab
                and t.untyped_storage().data_ptr() not in inputs
            ):
                self.rows = max(self.rows, t.numel() // self.vocab)
        return out


def profile(args) -> dict:
    from workbench.algorithms import get_algorithm
    from workbench.models import generation
    from workbench.tasks import get_task

    device = torch.device(args.device)
    model, tokenizer = load(args.model, args.device)
    task = get_task(args.task)
    examples = task.generate("train", args.prompts, 0)
    texts = generation.format_prompts(tokenizer, [e.prompt for e in examples])
    setup = dict(
        model=model,
        tokenizer=tokenizer,
        task=task,
        algo=get_algorithm(args.algorithm),
        examples=examples,
        texts=texts,
        n=args.n,
        T=args.max_new_tokens,
        device=device,
        optimizer=torch.optim.AdamW(model.parameters(), lr=0.0),
    )
    times: dict[str, list[float]] = {}
    checks = {}
    for repeat in range(args.repeats + 1):
        torch.manual_seed(repeat)
        phases, found = one_step(**setup, seed=repeat, record=repeat == 0)
        checks |= found
        if repeat > 0:  # the first is a warm-up
            for name, value in phases.items():
                times.setdefault(name, []).append(value)
    result = {"phases_s": {k: statistics.median(v) for k, v in times.items()}, "checks": checks}
    del setup
    result |= trainer_step_and_eval(args)
    result["peak_mb"] = (
        torch.cuda.max_memory_allocated() / 2**20
        if device.type == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    )
    return result


def one_step(*, model, tokenizer, task, algo, examples, texts, n, T, device, optimizer, seed, record):
    """Time each phase of one step; ``record``: also find the largest vocab-wide tensor of the update."""
    from workbench.models import generation

    temp = 1.0
    enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
    model.eval()
    with torch.no_grad():
        t_pre, _ = timed(lambda: generation._shared_prompt_inputs(model, enc, n), device)
        torch.manual_seed(seed)
        t_gen, gen = timed(
            lambda: generation.generate(model, tokenizer, texts, n=n, max_new_tokens=T, temperature=temp), device
        )
    t_rew, rewards = timed(
        lambda: torch.tensor([task.reward(examples[i // n], t) for i, t in enumerate(gen.texts)]), device
    )
    Tm = int(gen.response_mask.sum(-1).max())
    mask, response = gen.response_mask[:, :Tm], gen.response_ids[:, :Tm]
    batch = dict(
        ids=torch.cat([gen.prompt_ids, response], 1),
        attention=torch.cat([gen.prompt_mask, mask.long()], 1),
        mask=mask,
        rewards=rewards,
        n=n,
        temp=temp,
    )
    model.train()
    recorder = VocabRows(model.config.vocab_size)
    with recorder if record else contextlib.nullcontext():
        (t_fwd, t_loss, t_bwd), logp = update_phases(model, algo, batch, group_size=n)

    def optimizer_step():
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    t_opt, _ = timed(optimizer_step, device)
    # reference: the same update with every reply's prompt computed (the update before)
    (t_ref_fwd, _, t_ref_bwd), ref_logp = update_phases(model, algo, batch, group_size=1)
    optimizer.zero_grad(set_to_none=True)
    checks = {
        "shared_prompt_max_abs_diff_logp": float((logp - ref_logp)[mask].abs().max()),
        "generated_tokens": int(gen.response_mask.sum()),
        "prompt_tokens": int(enc["attention_mask"].sum()),
        "prompt_width": int(enc["input_ids"].shape[1]),
        "response_width": Tm,
    }
    if record:
        from workbench.entropy import _rows_per_chunk

        checks |= {
            "update_vocab_rows_max": recorder.rows,
            "update_tokens": int(mask.sum()),
            "rows_per_chunk": _rows_per_chunk(None, model.config.vocab_size),
        }
    phases = {
        "rollout.prefill": t_pre,
        "rollout.decode": t_gen - t_pre,
        "rewards": t_rew,
        "update.forward": t_fwd,
        "update.loss": t_loss,
        "update.backward": t_bwd,
        "update.optimizer": t_opt,
        "reference: update forward, every row's prompt": t_ref_fwd,
        "reference: update backward, every row's prompt": t_ref_bwd,
    }
    return phases, checks


def update_phases(model, algo, batch: dict, *, group_size: int):
    """Time the update's forward (token statistics with gradients, each group's prompt computed
    once when ``group_size`` is the group size), its loss and its backward; return the times and
    the log-probabilities (detached)."""
    from workbench.losses import policy_loss
    from workbench.models.scoring import token_stats_from_model

    ids, mask, n, device = batch["ids"], batch["mask"], batch["n"], batch["ids"].device
    Tm = mask.shape[1]
    t_fwd, (logp, ent) = timed(
        lambda: token_stats_from_model(
            model,
            ids,
            batch["attention"],
            response_len=Tm,
            response_mask=mask,
            temperature=batch["temp"],
            group_size=group_size,
        ),
        device,
    )

    def loss_fn():
        grouped = (batch["rewards"].view(-1, n), ent.detach().view(-1, n, Tm).cpu().float(), mask.view(-1, n, Tm).cpu())
        adv = algo.advantages(*grouped).view(-1, Tm).to(device)
        return policy_loss(
            logp, logp.detach(), adv, mask, eps_low=algo.eps_low, eps_high=algo.eps_high, agg=algo.agg, level=algo.level
        )[0]

    t_loss, loss = timed(loss_fn, device)
    t_bwd, _ = timed(loss.backward, device)
    return (t_fwd, t_loss, t_bwd), logp.detach()


def trainer_step_and_eval(args) -> dict:
    from workbench.training.trainer import Trainer

    with tempfile.TemporaryDirectory() as out:
        config = dict(
            model=args.model,
            task=args.task,
            algorithm=args.algorithm,
            dynamic_sampling=False,
            overlong_shaping=False,
            steps=10**6,
            prompts_per_step=args.prompts,
            group_size=args.n,
            max_new_tokens=args.max_new_tokens,
            lr=1e-6,
            eval_size=args.eval_size,
            eval_every=10**6,
            save_every=0,
            log_samples_every=10**6,
            device=args.device,
            output_dir=out,
        )
        trainer = Trainer(config, progress=False)
        rows = [trainer.train_step(step) for step in range(1, args.repeats + 2)][1:]
        evals = []
        for _ in range(max(1, args.repeats // 2) + 1):
            t = time.perf_counter()
            trainer.evaluate()
            evals.append(time.perf_counter() - t)
        trainer_rows = {
            k: statistics.median(r.get(k, float("nan")) for r in rows)
            for k in ("time_step", "time_rollout", "time_reward", "time_score", "time_update", "generated_tokens")
        }
        close = getattr(trainer, "close", None)
        if close:
            close()
    return {
        "trainer_step_s": trainer_rows,
        "evaluation_s": statistics.median(evals[1:] or evals),
        "eval_size": args.eval_size,
    }


def report(args, result: dict) -> None:
    phases = result["phases_s"]
    core = {k: v for k, v in phases.items() if not k.startswith("reference")}
    total = sum(core.values())
    print(
        f"model {args.model}, task {args.task}, {args.prompts} prompts x {args.n}, max_new_tokens "
        f"{args.max_new_tokens}, device {args.device}, threads {torch.get_num_threads()}"
    )
    c = result["checks"]
    print(
        f"prompt tokens {c['prompt_tokens']} (width {c['prompt_width']}), generated tokens {c['generated_tokens']} "
        f"(width {c['response_width']})"
    )
    print(f"{'phase':58} {'seconds':>9} {'share':>7}")
    for name, value in core.items():
        print(f"{name:58} {value:9.3f} {value / total:7.1%}")
    print(f"{'sum of the phases':58} {total:9.3f}")
    for name, value in phases.items():
        if name.startswith("reference"):
            print(f"{name:58} {value:9.3f}")
    shared = phases["update.forward"] + phases["update.backward"]
    whole = (
        phases["reference: update forward, every row's prompt"]
        + phases["reference: update backward, every row's prompt"]
    )
    print(
        f"update forward + backward, each group's prompt once: {shared:.3f} s against {whole:.3f} s with every "
        f"row's prompt ({whole / shared:.2f}x); same log-probs to {c['shared_prompt_max_abs_diff_logp']:.1e}"
    )
    t = result["trainer_step_s"]
    print(
        f"trainer.train_step: {t['time_step']:.3f} s (rollout {t['time_rollout']:.3f}, reward {t['time_reward']:.3f}, "
        f"score {t['time_score']:.3f}, update {t['time_update']:.3f}; {t['generated_tokens']:.0f} tokens)"
    )
    print(f"trainer.evaluate ({result['eval_size']} problems, greedy + sampled): {result['evaluation_s']:.3f} s")
    print(
        f"largest float32 [rows, vocab] tensor in the update: {c['update_vocab_rows_max']} rows "
        f"(the update scores {c['update_tokens']} reply tokens; statistics take {c['rows_per_chunk']} rows at a time)"
    )
    print(f"peak memory: {result['peak_mb']:.0f} MB")
    print("json:", json.dumps(result))


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--model",
        default="smollm2-135m-instruct",
        help="a named model, a .gguf file, a checkpoint directory, or 'default' (the shipped tiny warm start)",
    )
    p.add_argument("--task", default=None, help="default: word_arithmetic (addition for --model default)")
    p.add_argument("--algorithm", default="gtpo")
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--n", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--eval-size", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--smoke", action="store_true", help="the shipped tiny model, 2 prompts x 2, 8 tokens, 1 repeat")
    args = p.parse_args(argv)
    if args.smoke:
        args.model, args.prompts, args.n, args.max_new_tokens, args.eval_size, args.repeats = "default", 2, 2, 8, 4, 1
    if args.task is None:
        args.task = "addition" if args.model == "default" else "word_arithmetic"
    result = profile(args)
    report(args, result)
    return result


if __name__ == "__main__":
    main()
