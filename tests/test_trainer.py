"""The RL trainer end to end on CPU with a tiny model: every algorithm, resume, bad input."""

import copy
import json
import os
import subprocess
import sys
import warnings

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from workbench.runs import load_run
from workbench.training.config import TrainConfig
from workbench.training.trainer import Trainer, resume, train

TINY = dict(
    model="tiny",
    model_params={
        "hidden_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "num_key_value_heads": 2,
        "intermediate_size": 64,
    },
    prompts_per_step=3,
    group_size=4,
    max_new_tokens=12,
    eval_size=8,
    eval_every=2,
    save_every=2,
    log_samples_every=1,
    lr=1e-3,
)


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
)


def cfg(tmp_path, **kw):
    return {**TINY, "output_dir": str(tmp_path / "run"), **kw}


def warm(tmp_path, **kw):
    """From the shipped warm start: right some of the time, so rewards vary within groups."""
    return {**WARM, "output_dir": str(tmp_path / "run"), **kw}


@pytest.mark.parametrize("algorithm", ["grpo", "dapo", "gtpo", "grpo_s"])
def test_each_algorithm_trains_end_to_end(tmp_path, algorithm):
    trainer = Trainer(
        warm(tmp_path, algorithm=algorithm, steps=2, dynamic_sampling=False, ppo_epochs=2, minibatches=2),
        progress=False,
    )
    before = {k: v.detach().clone() for k, v in trainer.unwrapped.state_dict().items()}
    run = trainer.train()
    m = run.metrics
    assert list(m["step"]) == [1, 2]
    for col in ("loss", "grad_norm", "entropy", "reward", "accuracy", "clip_frac", "approx_kl"):
        assert m[col].notna().all() and bool(torch.isfinite(torch.tensor(m[col].values)).all()), col
    assert (m["entropy"] > 0).all() and (m["response_len_mean"] >= 1).all()
    after = trainer.unwrapped.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before), "parameters did not change"
    assert list(run.evals["step"]) == [0, 2]
    assert {"greedy_accuracy", "sampled_accuracy", "entropy"} <= set(run.evals.columns)
    config = json.loads((run.path / "config.json").read_text())
    assert config["algorithm"] == algorithm and config["eps_high"] == (0.2 if algorithm == "grpo" else 0.28)
    sample = run.samples[0]
    resp = sample["responses"][0]
    assert len(resp["tokens"]) == len(resp["entropies"]) == len(resp["advantages"]) == len(resp["logprobs"])
    assert len(sample["responses"]) == 4 and sample["algorithm"] == algorithm
    a, b = map(int, sample["prompt"].rstrip("=").split("+"))
    assert sample["answer"] == str(a + b)  # the gold answer of the group's prompt
    ckpt = run.latest_checkpoint()
    assert ckpt.name == "step_000002" and (ckpt / "model.safetensors").exists()


def test_resume_matches_uninterrupted_run(tmp_path):
    common = dict(algorithm="gtpo", dynamic_sampling=False, save_every=2)
    full = train(warm(tmp_path / "a", steps=4, **common), progress=False)
    part = train(warm(tmp_path / "b", steps=2, **common), progress=False)
    resumed = resume(part.path, steps=4, progress=False)
    cols = ["step", "loss", "reward", "entropy", "grad_norm", "response_len_mean"]
    pd.testing.assert_frame_equal(full.metrics[cols], resumed.metrics[cols], rtol=1e-5, atol=1e-6)
    a = load_file(full.latest_checkpoint() / "model.safetensors")
    b = load_file(resumed.latest_checkpoint() / "model.safetensors")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)


def test_resume_after_kill_drops_rows_past_the_checkpoint(tmp_path):
    run = train(cfg(tmp_path, steps=3, algorithm="grpo", save_every=2, eval_every=10), progress=False)
    assert list(run.metrics["step"]) == [1, 2, 3]
    # simulate a crash after step 3's metrics row but before its checkpoint
    import shutil

    shutil.rmtree(run.path / "checkpoints" / "step_000003")
    (run.path / "checkpoints" / "latest").write_text("step_000003")
    resumed = resume(run.path, progress=False)
    assert list(resumed.metrics["step"]) == [1, 2, 3]


def test_dynamic_sampling_drops_zero_variance_groups(tmp_path):
    # a fresh tiny model is never right: every group has equal rewards, so every round is dropped
    run = train(cfg(tmp_path, algorithm="dapo", steps=1, max_sampling_rounds=2), progress=False)
    row = run.metrics.iloc[0]
    assert row["sampling_rounds"] == 2 and row["groups"] == 0 and row["frac_zero_std"] == 1.0
    # from the warm start some groups are mixed: only those are kept
    run = train(
        warm(tmp_path / "w", algorithm="dapo", steps=1, prompts_per_step=4, max_sampling_rounds=3), progress=False
    )
    row = run.metrics.iloc[0]
    assert 1 <= row["groups"] <= 4 and 0 < row["frac_zero_std"] < 1
    assert all(0 < sum(r["correct"] for r in s["responses"]) < 4 for s in run.samples)


def _tiny_cli(out, *extra) -> list[str]:
    """``python -m workbench train`` on the tiny model for one step at the smallest size, into ``out``."""
    size = ["--steps", "1", "--prompts-per-step", "2", "--group-size", "2", "--max-new-tokens", "6", "--eval-size", "4"]
    model = ["--model", "tiny", "--model-params", json.dumps(TINY["model_params"])]
    return [sys.executable, "-m", "workbench", "train", *model, *size, "--output-dir", str(out), *extra]


def test_cli_train_smoke(tmp_path):
    out = tmp_path / "cli"
    res = subprocess.run(_tiny_cli(out, "--algorithm", "grpo_s"), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert len(load_run(out).metrics) == 1
    res = subprocess.run(_tiny_cli(out, "--algorithm", "ppo"), capture_output=True, text=True, timeout=300)
    assert res.returncode != 0 and "unknown 'ppo'" in res.stderr


def test_bad_input_errors(tmp_path):
    with pytest.raises(ValueError, match="algorithm: unknown 'ppo'"):
        TrainConfig(algorithm="ppo")
    with pytest.raises(ValueError, match="group_size must be >= 1|group_size must be >= 2"):
        TrainConfig(group_size=0)
    with pytest.raises(ValueError, match="group_size must be >= 2"):
        TrainConfig(group_size=1)
    with pytest.raises(FileNotFoundError, match="/no/such/model"):
        TrainConfig(model="/no/such/model")
    with pytest.raises(ValueError, match=r"eps_high \(0.1\) must be >= eps_low \(0.2\)"):
        TrainConfig(eps_high=0.1)
    with pytest.raises(ValueError, match="unknown config key"):
        TrainConfig.from_dict({"stepz": 3})
    with pytest.raises(TypeError, match="steps must be int"):
        TrainConfig(steps="10")
    with pytest.raises(ValueError, match="lr must be > 0"):
        TrainConfig(lr=0.0)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "a", "answer": "1"}\n{"question": "b"}\n')
    with pytest.raises(ValueError, match="line 2: missing field 'answer'"):
        train(cfg(tmp_path, task="jsonl", task_params={"path": str(bad)}, steps=1), progress=False)
    train(cfg(tmp_path, steps=1, eval_every=5), progress=False)
    with pytest.raises(FileExistsError, match="already holds a run"):
        train(cfg(tmp_path, steps=1), progress=False)


def test_format_prompts_uses_a_chat_template_only_when_present():
    from workbench.models.generation import format_prompts
    from workbench.models.tokenizer import build_char_tokenizer

    tok = build_char_tokenizer()
    assert format_prompts(tok, ["1+2="]) == ["1+2="]  # no template: prompts unchanged
    with pytest.raises(ValueError, match="no chat template"):
        format_prompts(tok, ["1+2="], chat_template=True)
    tok.chat_template = (
        "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"
        "{% if add_generation_prompt %}<a>{% endif %}"
    )
    assert format_prompts(tok, ["1+2="]) == ["<user>1+2=<a>"]
    assert format_prompts(tok, ["1+2="], chat_template=False) == ["1+2="]


@pytest.mark.parametrize("algorithm", ["grpo", "gtpo", "grpo_s"])
def test_fused_on_policy_update_equals_the_two_pass_update(tmp_path, algorithm):
    # micro_batch_size=0 (default): one forward gives old log-probs, entropies and the loss;
    # micro_batch_size=B: a separate scoring pass, then the update (one micro-batch of all rows)
    B = 3 * 4
    fused = Trainer(warm(tmp_path / "a", algorithm=algorithm, dynamic_sampling=False), progress=False)
    twopass = Trainer(
        warm(tmp_path / "b", algorithm=algorithm, dynamic_sampling=False, micro_batch_size=B), progress=False
    )
    assert fused.fused_update and not twopass.fused_update
    grads = {}
    for name, trainer in (("fused", fused), ("twopass", twopass)):  # the gradient each optimizer step sees
        step = trainer.optimizer.step

        def spy(*a, _name=name, _trainer=trainer, _step=step, **k):
            grads[_name] = [p.grad.detach().clone() for p in _trainer.unwrapped.parameters()]
            return _step(*a, **k)

        trainer.optimizer.step = spy
    row_a, row_b = fused.train_step(1), twopass.train_step(1)
    for key in ("reward", "entropy", "advantage_abs_mean", "policy_loss", "grad_norm"):
        assert row_a[key] == pytest.approx(row_b[key], rel=1e-4, abs=1e-6), key
    assert row_a["advantage_abs_mean"] > 0 and row_a["grad_norm"] > 0  # an informative step
    assert set(grads) == {"fused", "twopass"} and len(grads["fused"]) > 0
    for g, h in zip(grads["fused"], grads["twopass"]):
        torch.testing.assert_close(g, h, atol=1e-6, rtol=1e-4)


def test_the_update_computes_each_groups_prompt_once(tmp_path, monkeypatch):
    """The fused update runs each group's prompt once (with gradients, its KV cache repeated to
    the group's replies): the same step as the whole rows, prompt repeated for each reply."""
    import workbench.models.scoring
    from workbench.training.runner import ModelRunner

    shared_calls = []
    shared = workbench.models.scoring._shared_prompt_hidden

    def spy(decoder, input_ids, *args):
        shared_calls.append((input_ids.shape[0], args[-1], torch.is_grad_enabled()))
        return shared(decoder, input_ids, *args)

    monkeypatch.setattr(workbench.models.scoring, "_shared_prompt_hidden", spy)
    whole = ModelRunner.token_stats
    rows, grads = {}, {}
    for share in (True, False):
        if not share:  # the repeated-prompt path: every row's prompt computed
            monkeypatch.setattr(ModelRunner, "token_stats", lambda *a, **k: whole(*a, **{**k, "group_size": 1}))
        trainer = Trainer(warm(tmp_path / str(share), algorithm="gtpo", dynamic_sampling=False), progress=False)
        assert trainer.fused_update
        step = trainer.optimizer.step

        def grads_then_step(*a, _share=share, _trainer=trainer, _step=step, **k):
            grads[_share] = torch.cat([p.grad.flatten() for p in _trainer.unwrapped.parameters()])
            return _step(*a, **k)

        trainer.optimizer.step = grads_then_step
        rows[share] = trainer.train_step(1)
    assert shared_calls == [(12, 4, True)]  # the update's forward: 3 groups of 4, with gradients
    assert rows[True]["grad_norm"] > 0
    for key in ("reward", "entropy", "advantage_abs_mean", "policy_loss", "grad_norm", "clip_frac"):
        assert rows[True][key] == pytest.approx(rows[False][key], rel=1e-5, abs=1e-7), key
    assert float((grads[True] - grads[False]).norm() / grads[False].norm()) < 1e-5


def test_save_every_zero_writes_no_checkpoint(tmp_path):
    """``save_every=0``: never a checkpoint (a real model's is 1.6 GB); the run is complete
    otherwise, and resuming it says why it cannot be."""
    run = train(cfg(tmp_path, steps=2, save_every=0, eval_every=1), progress=False)
    assert list(run.metrics["step"]) == [1, 2] and list(run.evals["step"]) == [0, 1, 2]
    assert run.checkpoints() == [] and not any((run.path / "checkpoints").iterdir())
    with pytest.raises(ValueError, match="save_every=0 .*cannot be resumed"):
        resume(run.path, steps=3)
    assert list(load_run(run.path).metrics["step"]) == [1, 2]  # nothing touched
    with pytest.raises(ValueError, match="save_every must be >= 0"):
        TrainConfig(save_every=-1)
    assert "0: never" in TrainConfig.describe("save_every")  # train --help shows it (the test of the help below)


def test_gradient_checkpointing_gives_the_same_step(tmp_path):
    """Recomputing activations in the backward changes memory, not the numbers."""
    rows = {}
    for flag in (False, True):
        trainer = Trainer(
            warm(tmp_path / str(flag), algorithm="gtpo", dynamic_sampling=False, gradient_checkpointing=flag),
            progress=False,
        )
        layers = trainer.unwrapped.model.layers
        assert all(layer.gradient_checkpointing == flag for layer in layers) and len(layers) > 0
        rows[flag] = trainer.train_step(1)
    assert rows[False]["grad_norm"] > 0
    for key in ("reward", "entropy", "advantage_abs_mean", "policy_loss", "grad_norm"):
        assert rows[True][key] == pytest.approx(rows[False][key], rel=1e-5, abs=1e-7), key


@pytest.mark.parametrize("micro_batch_size", [0, 2])
def test_each_minibatch_is_normalised_by_its_own_tokens(tmp_path, monkeypatch, micro_batch_size):
    """token-mean: every optimizer step divides by its own mini-batch's valid tokens, shared by
    the micro-batches of that mini-batch (not the first mini-batch's count reused)."""
    import workbench.training.trainer as trainer_mod

    calls = []
    real = trainer_mod.policy_loss

    def spy(logp_new, logp_old, advantages, mask, **kwargs):
        calls.append((int(mask.sum()), kwargs["denominator"]))
        return real(logp_new, logp_old, advantages, mask, **kwargs)

    monkeypatch.setattr(trainer_mod, "policy_loss", spy)
    trainer = Trainer(
        warm(
            tmp_path,
            algorithm="dapo",
            dynamic_sampling=False,
            minibatches=3,
            ppo_epochs=2,
            micro_batch_size=micro_batch_size,
        ),
        progress=False,
    )
    trainer.train_step(1)
    per_mb = 1 if micro_batch_size == 0 else 2  # 12 rows in 3 mini-batches of 4, micro-batches of 2
    assert len(calls) == 3 * 2 * per_mb
    minibatches = [calls[i : i + per_mb] for i in range(0, len(calls), per_mb)]
    for mb in minibatches:
        tokens = sum(t for t, _ in mb)
        assert all(d == tokens for _, d in mb), mb
    assert len({sum(t for t, _ in mb) for mb in minibatches}) > 1  # the counts differ: the test can fail


def test_reward_timeouts_are_counted_in_the_metrics(tmp_path, monkeypatch):
    """Every response is scored once; a check that runs out of time scores 0 and is counted."""
    import workbench.tasks.jsonl as jsonl_mod

    data = tmp_path / "t.jsonl"
    data.write_text(
        "".join(
            json.dumps({"question": f"{a}+{b}=", "answer": str(a + b)}) + "\n" for a in range(10) for b in range(10)
        )
    )
    calls = []
    monkeypatch.setattr(jsonl_mod, "verify", lambda gold, answer, timeout: calls.append(answer) or (False, True))
    run = train(
        warm(tmp_path, algorithm="grpo", task="jsonl", task_params={"path": str(data)}, steps=1, eval_every=10),
        progress=False,
    )
    row = run.metrics.iloc[0]
    samples = run.samples[0]["responses"]
    assert row["reward_timeouts"] > 0 and row["reward_timeouts"] + run.evals["reward_timeouts"].sum() == len(calls)
    assert row["accuracy"] == 0.0 and len(samples) == 4


def test_lenient_jsonl_skipped_lines_are_printed_and_recorded(tmp_path):
    data = tmp_path / "t.jsonl"
    good = [json.dumps({"question": f"{a}+{b}=", "answer": str(a + b)}) for a in range(10) for b in range(10)]
    data.write_text("\n".join(good[:5] + ['{"question": "x"}', "not json"] + good[5:]) + "\n")
    out = tmp_path / "cli"
    cmd = _tiny_cli(out, "--task", "jsonl", "--task-params", json.dumps({"path": str(data), "lenient": True}))
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "skipped 2 malformed line(s)" in res.stdout and "line 6: missing field 'answer'" in res.stderr
    info = json.loads((out / "task.json").read_text())
    assert info["skipped_lines"] == 2 and [s["line"] for s in info["skipped"]] == [6, 7]
    assert info["examples"] == 100 and info["train_problems"] + info["eval_problems"] == 100


def test_cli_errors_are_one_line_with_the_traceback_behind_debug(tmp_path):
    base = _tiny_cli(tmp_path / "run")
    cases = [
        (["--model", "/no/such/model"], "/no/such/model"),
        (["--advantage-kwargs", '{"alpha3": 1}'], "alpha3"),
        (["--task", "jsonl", "--task-params", json.dumps({"path": str(tmp_path / "missing.jsonl")})], "missing.jsonl"),
    ]
    for extra, needle in cases:
        res = subprocess.run(base + extra, capture_output=True, text=True, timeout=300)
        lines = [line for line in res.stderr.splitlines() if line.strip()]
        assert res.returncode == 1 and len(lines) == 1 and needle in lines[0] and "Traceback" not in res.stderr, (
            res.stderr[-2000:]
        )
        assert lines[0].startswith("error: ") and "--debug" in lines[0]
    res = subprocess.run(base + ["--model", "/no/such/model", "--debug"], capture_output=True, text=True, timeout=300)
    assert res.returncode != 0 and "Traceback" in res.stderr and "/no/such/model" in res.stderr
    res = subprocess.run(
        base[:3] + ["--debug"] + base[3:] + ["--model", "/no/such/model"], capture_output=True, text=True, timeout=300
    )  # --debug before the command works too
    assert res.returncode != 0 and "Traceback" in res.stderr


def test_trainer_passes_the_constant_length_and_the_dual_clip(tmp_path, monkeypatch):
    import workbench.training.trainer as trainer_mod

    seen = []
    real = trainer_mod.policy_loss
    monkeypatch.setattr(trainer_mod, "policy_loss", lambda *a, **k: seen.append(k) or real(*a, **k))
    trainer = Trainer(warm(tmp_path, algorithm="dr_grpo", clip_ratio_c=3.0, max_new_tokens=16), progress=False)
    row = trainer.train_step(1)
    assert seen and all(k["norm_len"] == 16 and k["clip_ratio_c"] == 3.0 for k in seen)
    assert seen[0]["agg"] == "seq-mean-token-sum-norm" and 0 <= row["clip_frac_dual"] <= 1
    with pytest.raises(ValueError, match="clip_ratio_c must be > 1"):
        TrainConfig(clip_ratio_c=0.5)


def test_metrics_cover_every_sampled_group_with_the_kept_ones_beside(tmp_path, monkeypatch):
    """With dynamic sampling, reward, accuracy, length and entropy are measured over every sampled
    group (as for GRPO), the kept-group values under *_kept; the entropy of the dropped groups
    comes from a scoring pass, checked here against one independent pass over all groups."""
    from workbench.models.scoring import token_stats_from_model
    from workbench.training.rollout import collate

    trainer = Trainer(warm(tmp_path, algorithm="dapo", prompts_per_step=4, max_sampling_rounds=3), progress=False)
    seen = []
    real = trainer.compute_rewards

    def spy(groups):
        rewarded = real(groups)
        seen.extend(rewarded)
        return rewarded

    monkeypatch.setattr(trainer, "compute_rewards", spy)
    before = copy.deepcopy(trainer.unwrapped).eval()  # the behaviour policy (the step updates the model)
    row = trainer.train_step(1)
    kept = [g for g in seen if g.informative][:4]
    assert row["groups_sampled"] == len(seen) > row["groups"] == len(kept) > 0  # some groups were dropped
    correct = torch.cat([g.correct for g in seen]).float()
    assert row["accuracy"] == pytest.approx(float(correct.mean()))
    assert row["accuracy_kept"] == pytest.approx(float(torch.cat([g.correct for g in kept]).float().mean()))
    assert row["reward"] == pytest.approx(float(torch.cat([g.rewards for g in seen]).mean()), rel=1e-6)
    assert row["response_len_mean"] == pytest.approx(float(torch.cat([g.lengths for g in seen]).float().mean()))
    assert row["response_len_max"] == max(int(g.lengths.max()) for g in seen) and row["updated"] is True
    for key, groups in (("entropy", seen), ("entropy_kept", kept)):
        b = collate(groups, trainer.tokenizer.pad_token_id, "cpu")
        with torch.no_grad():
            _, ent = token_stats_from_model(
                before,
                b.input_ids,
                b.attention_mask,
                response_len=b.response_mask.shape[1],
                response_mask=b.response_mask,
            )
        assert row[key] == pytest.approx(float(ent[b.response_mask].mean()), rel=1e-4), key
    assert row["entropy_kept"] != pytest.approx(row["entropy"])
    # without dynamic sampling every sampled group is kept: the two columns agree
    plain = Trainer(warm(tmp_path / "plain", algorithm="grpo"), progress=False).train_step(1)
    for key in ("reward", "accuracy", "response_len_mean", "entropy"):
        assert plain[key] == pytest.approx(plain[f"{key}_kept"], rel=1e-6), key


def test_a_step_that_keeps_no_group_still_logs_a_row(tmp_path):
    """A fresh tiny model is never right: dynamic sampling keeps nothing. Every step still has a
    row, with what was sampled (entropy included) and updated = false, and no update columns."""
    run = train(cfg(tmp_path, algorithm="dapo", steps=2, max_sampling_rounds=2), progress=False)
    m = run.metrics
    assert list(m["step"]) == [1, 2] and not m["updated"].any() and (m["groups"] == 0).all()
    assert (m["entropy"] > 0).all() and (m["accuracy"] == 0).all() and (m["groups_sampled"] == 6).all()
    assert "grad_norm" not in m and "entropy_kept" not in m
    from workbench.training.metrics import METRIC_COLUMNS

    assert set(m.columns) <= set(METRIC_COLUMNS)


def test_overlong_shaping_warns_when_it_penalises_worked_solutions(tmp_path):
    """3-digit addition's worked solutions take up to 13 tokens with the end token: with
    max_new_tokens=16 and DAPO's cache of 4 the longest are penalised; the default budget is not."""
    with pytest.warns(UserWarning, match=r"penalises \d+ of 257 correct worked solutions.*at least 17"):
        Trainer(warm(tmp_path / "a", algorithm="dapo", max_new_tokens=16), progress=False).close()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Trainer({"output_dir": str(tmp_path / "b")}, progress=False).close()  # the default config
    assert TrainConfig().max_new_tokens - TrainConfig().overlong_cache >= 13


def test_eval_size_larger_than_the_held_out_split(tmp_path):
    data = tmp_path / "t.jsonl"
    data.write_text(
        "".join(json.dumps({"question": f"{a}+{b}=", "answer": str(a + b)}) + "\n" for a in range(8) for b in range(8))
    )
    from workbench.tasks import get_task

    held_out = get_task("jsonl", path=str(data)).split_size("eval")
    with pytest.warns(UserWarning, match=rf"eval_size=40 is larger than the held-out split.*\({held_out} distinct"):
        run = train(cfg(tmp_path, task="jsonl", task_params={"path": str(data)}, eval_size=40, steps=1), progress=False)
    assert list(run.evals["problems"]) == [held_out, held_out] and held_out < 40


def test_train_help_shows_every_option_with_its_meaning_default_and_choices():
    """The help comes from the config fields' own documentation, so the two cannot drift."""
    import dataclasses
    import re

    from workbench import ALGORITHMS
    from workbench.losses import AGGREGATIONS, LEVELS

    env = {**os.environ, "COLUMNS": "2000"}  # no wrapping inside the words (argparse breaks at hyphens)
    res = subprocess.run(
        [sys.executable, "-m", "workbench", "train", "--help"], capture_output=True, text=True, timeout=120, env=env
    )
    assert res.returncode == 0
    text = " ".join(res.stdout.split())
    for f in dataclasses.fields(TrainConfig):
        assert f"--{f.name.replace('_', '-')}" in text, f.name
        assert " ".join(f.metadata["help"].split()) in text, f.name
        assert re.search(rf"--{f.name.replace('_', '-')} \S+ .*?\(default: ", text), f.name
    for name in (*ALGORITHMS, *AGGREGATIONS, *LEVELS, "cosine", "fsdp", "replicated"):
        assert name in text, name
    assert "(default: 20)" in text and "token-mean" in TrainConfig.describe("agg")
    eps_high = TrainConfig.describe("eps_high")
    assert re.search(r"\bgrpo(, \w+)*: 0\.2\b", eps_high) and "0.28" in eps_high


def test_convert_gguf_command_calls_the_converter(tmp_path, monkeypatch, capsys):
    import workbench.models
    from workbench.cli import main

    calls = []
    monkeypatch.setattr(
        workbench.models,
        "convert_gguf",
        lambda file, out_dir: calls.append((file, out_dir)) or tmp_path / "out",
        raising=False,
    )
    assert main(["convert-gguf", "model.gguf", str(tmp_path / "out")]) == 0
    assert calls == [("model.gguf", str(tmp_path / "out"))] and str(tmp_path / "out") in capsys.readouterr().out

    def broken(file, out_dir):
        raise FileNotFoundError(f"no GGUF file at {file}")

    monkeypatch.setattr(workbench.models, "convert_gguf", broken, raising=False)
    assert main(["convert-gguf", "missing.gguf", str(tmp_path / "x")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: FileNotFoundError: no GGUF file at missing.gguf") and "\n" not in err
