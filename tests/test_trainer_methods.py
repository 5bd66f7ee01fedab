"""The entropy methods inside the trainer: what each loss receives, the forking tokens over the
optimizer step's rows, the surprisal signal, the entropy-bonus schedules, pass@k evaluation."""

import json

import pytest
import torch

import workbench
from workbench import advantages as adv
from workbench.losses import top_entropy_mask
from workbench.training.trainer import Trainer

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
    dynamic_sampling=False,
)


def warm(tmp_path, **kw):
    return {**WARM, "output_dir": str(tmp_path / "run"), **kw}


def spy_losses(monkeypatch):
    """Record every policy_loss call of the trainer (its keyword tensors, detached)."""
    import workbench.training.trainer as trainer_mod

    calls, real = [], trainer_mod.policy_loss

    def spy(*args, **kwargs):
        calls.append({k: v.detach().clone() if torch.is_tensor(v) else v for k, v in kwargs.items()})
        calls[-1]["mask"] = args[3].clone()
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer_mod, "policy_loss", spy)
    return calls


def test_forking_tokens_are_chosen_over_the_optimizer_steps_rows(tmp_path, monkeypatch):
    """dapo_forking with two micro-batches per optimizer step: the loss calls together train on
    the top 20% of the whole step's valid tokens by behaviour entropy (the rows are shuffled into
    micro-batches, so a per-call threshold would choose other tokens); the denominator stays the
    step's token count."""
    calls = spy_losses(monkeypatch)
    trainer = Trainer(warm(tmp_path, algorithm="dapo_forking", micro_batch_size=6), progress=False)
    scored = []
    real_score = trainer.score

    def spy_score(batch):
        scored.append((batch, real_score(batch)))
        return scored[-1][1]

    monkeypatch.setattr(trainer, "score", spy_score)
    row = trainer.train_step(1)
    batch, s = scored[0]
    expected = top_entropy_mask(s.entropies, batch.response_mask, 0.2)
    assert len(calls) == 2 and row["updated"]
    for call in calls:
        assert call["top_entropy_keep"].dtype == torch.bool and not (call["top_entropy_keep"] & ~call["mask"]).any()
        assert call["denominator"] == float(batch.response_mask.sum())
    assert sum(int(c["top_entropy_keep"].sum()) for c in calls) == int(expected.sum()) > 0
    kept = [int(c["top_entropy_keep"].sum()) / int(c["mask"].sum()) for c in calls]
    assert row["top_entropy_kept_frac"] == pytest.approx(sum(kept) / 2)


def test_erc_and_the_cov_methods_receive_both_entropies(tmp_path, monkeypatch):
    """ERC's loss gets the current entropies of its forward and the behaviour ones; with two
    mini-batches the second one is off-policy, so ERC keeps fewer than all tokens."""
    calls = spy_losses(monkeypatch)
    row = Trainer(warm(tmp_path, algorithm="erc", minibatches=2), progress=False).train_step(1)
    assert len(calls) == 2
    for call in calls:
        assert call["loss_mode"] == "erc" and call["clip_ratio_c"] == 3.0  # the algorithm's dual clip
        assert call["entropies"] is not None and call["entropies_old"] is not None
    first, second = calls
    assert torch.allclose(first["entropies"][first["mask"]], first["entropies_old"][first["mask"]], atol=1e-5)
    assert not torch.allclose(second["entropies"][second["mask"]], second["entropies_old"][second["mask"]], atol=1e-6)
    assert 0 < row["erc_kept_frac"] < 1
    assert row["entropy"] != row.get("policy_entropy")  # the row's entropy stays the sampled responses'
    calls.clear()
    Trainer(warm(tmp_path / "kl", algorithm="kl_cov", minibatches=2), progress=False).train_step(1)
    assert [c["loss_mode"] for c in calls] == ["kl_cov", "kl_cov"] and calls[0]["kl_cov_ratio"] == 0.002


def test_surprisal_variants_weight_by_minus_the_old_log_probs(tmp_path, monkeypatch):
    trainer = Trainer(warm(tmp_path, algorithm="gtpo_surprisal"), progress=False)
    seen = {}
    real = trainer.advantages

    def spy(batch, scored):
        seen.update(batch=batch, scored=scored, out=real(batch, scored))
        return seen["out"]

    monkeypatch.setattr(trainer, "advantages", spy)
    trainer.train_step(1)
    b, s = seen["batch"], seen["scored"]
    G, n, T = b.groups, b.group_size, b.response_mask.shape[1]
    m = b.response_mask.view(G, n, T)
    expected = adv.gtpo(b.rewards.view(G, n), torch.where(m, -s.old_logp.view(G, n, T), 0.0), m)
    torch.testing.assert_close(seen["out"], expected.view(G * n, T))
    by_entropy = adv.gtpo(b.rewards.view(G, n), s.entropies.view(G, n, T), m).view(G * n, T)
    assert not torch.allclose(seen["out"], by_entropy)


def test_linear_entropy_schedule_and_adaptive_controller(tmp_path):
    run = workbench.train(
        warm(tmp_path / "lin", algorithm="grpo", steps=3, entropy_coef=0.01, entropy_coef_final=0.03), progress=False
    )
    assert list(run.metrics["entropy_coef"].round(6)) == [0.01, 0.02, 0.03]
    assert (run.metrics["policy_entropy"] > 0).all()
    # adaptive, target above every entropy of this model: the weight rises by delta each step, and
    # the bonus is off at the first step (no entropy measured yet)
    config = warm(tmp_path / "ada", algorithm="grpo", steps=2, entropy_target=5.0, entropy_coef_delta=0.01)
    run = workbench.train(config, progress=False)
    assert list(run.metrics["entropy_coef"].round(6)) == [0.0, 0.01]
    meta = json.loads((run.latest_checkpoint() / "checkpoint.json").read_text())
    assert meta["entropy_coef"] == pytest.approx(0.02) and meta["entropy_bonus_active"] is True
    resumed = workbench.resume(tmp_path / "ada" / "run", steps=3, progress=False)
    assert list(resumed.metrics["entropy_coef"].round(6)) == [0.0, 0.01, 0.02]  # the state came back


def test_eval_samples_give_pass_at_k(tmp_path, monkeypatch):
    run = workbench.train(warm(tmp_path, algorithm="grpo", steps=1, eval_samples=4), progress=False)
    ev = run.evals.iloc[-1]
    assert {"pass@1", "pass@2", "pass@4"} <= set(run.evals.columns) and "pass@8" not in run.evals.columns
    assert ev["pass@1"] == pytest.approx(ev["sampled_accuracy"])
    assert ev["pass@1"] <= ev["pass@2"] <= ev["pass@4"] <= 1
    one = workbench.train(warm(tmp_path / "one", algorithm="grpo", steps=1), progress=False)
    assert not any(c.startswith("pass@") for c in one.evals.columns)


def test_train_help_lists_the_new_algorithms_and_options(capsys):
    from workbench.cli import main

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for name in ("dapo_forking", "clip_cov", "kl_cov", "entropy_adv", "erc", "gtpo_surprisal", "grpo_s_surprisal"):
        assert name in text, name
    for option in (
        "--eval-samples",
        "--entropy-coef-final",
        "--entropy-target",
        "--loss-mode-kwargs",
        "--top-entropy-quantile",
    ):
        assert option in text, option


def test_evaluation_reports_held_out_phrasings_beside_the_trained_ones(tmp_path):
    from workbench.tasks import get_task

    config = dict(
        model="tiny",
        model_params={"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 2},
        task="word_arithmetic",
        task_params={"phrasings": "varied"},
        algorithm="grpo",
        steps=1,
        prompts_per_step=2,
        group_size=2,
        max_new_tokens=4,
        eval_size=30,
        eval_samples=2,
        output_dir=str(tmp_path / "run"),
    )
    trainer = Trainer(config, progress=False)
    groups = {e.meta["phrasing"] for e in trainer.eval_examples}
    assert groups == {"train", "held_out"}
    right = {}
    real = trainer.task.reward

    def spy(example, text):
        value = real(example, text)
        right.setdefault(example.meta["phrasing"], []).append(value > 0.5)
        return value

    trainer.task.reward = spy
    ev = trainer.evaluate()
    for group in groups:
        assert f"greedy_accuracy_phrasing_{group}" in ev and f"sampled_accuracy_phrasing_{group}" in ev
    # the greedy and sampled passes together: one greedy and two sampled replies per problem
    held = [e for e in trainer.eval_examples if e.meta["phrasing"] == "held_out"]
    assert len(right["held_out"]) == 3 * len(held)
    plain = get_task("word_arithmetic")
    assert "phrasing" not in plain.held_out(4, 0)[0].meta
    trainer.close()
