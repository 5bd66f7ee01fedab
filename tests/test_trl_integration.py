"""TRL integration: TRL's loss receives the workbench's advantages, and a few steps train.

The check is independent of the subclass's own code path: inside TRL's loss, the test
recomputes every completion's reward with the task and its entropies and log-probs with
``workbench.token_stats_from_model``, applies the library's function (``workbench.gtpo``,
``grpo_s``, ``entropy_advantage`` on GRPO's, and GTPO/GRPO-S on the surprisal ``-logp``), and
compares with the advantages TRL's loss received. Forking tokens (``dapo_forking``) run through
TRL's own ``top_entropy_quantile``; loss-side methods TRL has no hook for are refused.
"""

import re

import pytest
import torch

pytest.importorskip("trl", reason="TRL is the optional extra: pip install -e '.[bench]'")

from datasets import Dataset  # noqa: E402
from trl import GRPOConfig  # noqa: E402

from workbench import advantages as adv  # noqa: E402
from workbench import algorithms, losses  # noqa: E402
from workbench.integrations.trl import EntropyShapedGRPOTrainer, check_trl_algorithm  # noqa: E402
from workbench.models.load import load_model  # noqa: E402
from workbench.models.scoring import token_stats_from_model  # noqa: E402
from workbench.tasks import get_task  # noqa: E402
from workbench.training.config import DEFAULT_INIT  # noqa: E402

N = 4


def make_trainer(tmp_path, algorithm, steps=2, **config):
    task = get_task("addition")
    model, tokenizer = load_model(DEFAULT_INIT)
    examples = {e.prompt: e for e in task.generate("train", 8, seed=3)}

    def reward(prompts, completions, **_):
        return [task.reward(examples[p], c) for p, c in zip(prompts, completions)]

    args = GRPOConfig(
        output_dir=str(tmp_path),
        per_device_train_batch_size=4 * N,
        num_generations=N,
        max_completion_length=16,
        max_steps=steps,
        learning_rate=1e-3,
        beta=0.0,
        top_k=0,
        temperature=1.0,
        gradient_checkpointing=False,
        use_cpu=True,
        bf16=False,
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        shuffle_dataset=False,
        seed=0,
        disable_dropout=True,
        **config,
    )
    trainer = EntropyShapedGRPOTrainer(
        model=model,
        reward_funcs=reward,
        args=args,
        processing_class=tokenizer,
        train_dataset=Dataset.from_list([{"prompt": p} for p in examples]),
        algorithm=algorithm,
    )
    return trainer, task, examples, tokenizer


def surprisal(logp, mask):
    return (-logp).clamp(min=0) * mask


#: the library's function of (rewards [G, n], logp, entropies, mask [G, n, T]) for each algorithm
LIBRARY = {
    "gtpo": lambda r, logp, ent, m: adv.gtpo(r, ent, m),
    "grpo_s": lambda r, logp, ent, m: adv.grpo_s(r, ent, m),
    "entropy_adv": lambda r, logp, ent, m: adv.entropy_advantage(adv.grpo(r, m), ent, m, alpha=0.4, kappa=2.0),
    "gtpo_surprisal": lambda r, logp, ent, m: adv.gtpo(r, surprisal(logp, m), m),
    "grpo_s_surprisal": lambda r, logp, ent, m: adv.grpo_s(r, surprisal(logp, m), m),
    "dapo_forking": lambda r, logp, ent, m: adv.dapo(r, m),
}


def spy_on_loss(trainer, task, examples, tokenizer, algorithm):
    """Wrap TRL's ``_compute_loss``: record (advantages TRL received, the library's, mask, rewards,
    the library's with the entropy signal)."""
    seen = []
    compute_loss = trainer._compute_loss

    def spy(model, inputs):
        ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], 1)
        mask = inputs["completion_mask"].bool()
        T = mask.shape[1]
        with torch.no_grad():
            logp, ent = token_stats_from_model(
                model,
                ids,
                torch.cat([inputs["prompt_mask"], mask.long()], 1),
                response_len=T,
                response_mask=mask,
                method="logits",
            )
        prompts = tokenizer.batch_decode(inputs["prompt_ids"], skip_special_tokens=True)
        texts = tokenizer.batch_decode(inputs["completion_ids"], skip_special_tokens=True)
        rewards = torch.tensor([task.reward(examples[p], t) for p, t in zip(prompts, texts)])
        # TRL shuffles a generation batch before the loss: regroup the rows by prompt
        order = torch.tensor(sorted(range(len(prompts)), key=lambda i: prompts[i]))
        assert all(prompts[order[i]] == prompts[order[i - i % N]] for i in range(len(prompts)))

        def grouped_(x):
            return x[order].view(-1, N, T)

        def library(name):
            grouped = LIBRARY[name](rewards[order].view(-1, N), grouped_(logp), grouped_(ent), grouped_(mask))
            expected = torch.empty_like(grouped.view(-1, T))
            expected[order] = grouped.view(-1, T)
            return expected

        # beside it, for the surprisal variants, the entropy-weighted version (the signal must matter)
        alternative = library(algorithm.removesuffix("_surprisal"))
        seen.append((inputs["advantages"].detach().clone(), library(algorithm), mask, rewards[order], alternative))
        return compute_loss(model, inputs)

    trainer._compute_loss = spy
    return seen


@pytest.mark.parametrize("algorithm", ["gtpo", "grpo_s", "entropy_adv", "gtpo_surprisal", "grpo_s_surprisal"])
def test_trl_loss_receives_workbench_advantages(tmp_path, algorithm):
    trainer, task, examples, tokenizer = make_trainer(tmp_path, algorithm)
    seen = spy_on_loss(trainer, task, examples, tokenizer, algorithm)
    before = [p.detach().clone() for p in trainer.model.parameters()]
    trainer.train()
    assert seen, "TRL's loss was never called"
    informative = 0
    for got, expected, mask, rewards, _ in seen:
        assert got.shape == expected.shape  # token-level [B, T]
        torch.testing.assert_close(got, expected, atol=2e-4, rtol=1e-4)
        assert (got[~mask] == 0).all()
        informative += int((rewards.view(-1, N).std(-1) > 0).sum())
    assert informative > 0, "no group had mixed rewards: the comparison would be vacuous"
    if algorithm.endswith("_surprisal"):
        assert max((expected - alternative).abs().max().item() for _, expected, *_, alternative in seen) > 1e-2
    if algorithm in ("gtpo", "entropy_adv", "gtpo_surprisal"):  # token-specific along some response
        got = seen[0][0]
        assert any(got[i][seen[0][2][i]].unique().numel() > 1 for i in range(got.shape[0]))
    changed = any(not torch.equal(a, b.detach()) for a, b in zip(before, trainer.model.parameters()))
    assert changed, "a few TRL steps with workbench advantages did not update the model"
    logs = [h for h in trainer.state.log_history if "workbench/entropy" in h]
    assert logs and all(h["workbench/entropy"] > 0 for h in logs)
    if algorithm.endswith("_surprisal"):
        assert all(h["workbench/surprisal"] > 0 for h in logs)
    assert trainer.top_entropy_quantile == 1.0  # no forking-token mask for these


def test_dapo_forking_runs_on_trls_top_entropy_quantile(tmp_path):
    """dapo_forking sets TRL's own top_entropy_quantile to the algorithm's rho = 0.2; TRL's mask on
    the entropies it thresholds equals workbench.losses.top_entropy_mask of them; the advantages
    are DAPO's; the kept fraction is logged."""
    trainer, task, examples, tokenizer = make_trainer(tmp_path, "dapo_forking")
    assert trainer.top_entropy_quantile == 0.2 and trainer.args.top_entropy_quantile == 1.0
    seen = spy_on_loss(trainer, task, examples, tokenizer, "dapo_forking")
    masks = []
    high_entropy_mask = trainer.get_high_entropy_mask

    def spy(entropies, mask, threshold):
        keep = high_entropy_mask(entropies, mask, threshold)
        masks.append((entropies.detach().clone(), mask.bool(), threshold, keep))
        return keep

    trainer.get_high_entropy_mask = spy
    trainer.train()
    assert seen and len(masks) == len(seen)
    for got, expected, *_ in seen:
        torch.testing.assert_close(got, expected, atol=2e-4, rtol=1e-4)
    for entropies, mask, threshold, keep in masks:
        assert threshold == pytest.approx(0.8)  # TRL's argument is the quantile 1 - rho
        assert torch.equal(keep, losses.top_entropy_mask(entropies.float(), mask, 0.2))
        assert 0 < keep.sum() < 0.5 * mask.sum()  # about a fifth of the valid tokens
    kept = [h["workbench/top_entropy_kept"] for h in trainer.state.log_history if "workbench/top_entropy_kept" in h]
    assert kept and all(0.1 < k < 0.5 for k in kept)
    own, *_ = make_trainer(tmp_path, "dapo_forking", top_entropy_quantile=0.5)
    assert own.top_entropy_quantile == 0.5  # the user's GRPOConfig value wins


@pytest.mark.parametrize(
    "algorithm,instead",
    [
        ("clip_cov", r"verl's native loss_mode \(workbench.integrations.verl.verl_overrides\('clip_cov'\)\)"),
        ("kl_cov", r"verl's native loss_mode \(workbench.integrations.verl.verl_overrides\('kl_cov'\)\)"),
        ("erc", r"workbench train --algorithm erc\)$"),
    ],
)
def test_loss_side_methods_are_refused(algorithm, instead):
    pattern = rf"^{algorithm}: loss_mode '{algorithm}' changes the per-token loss, and TRL's GRPOTrainer has no hook"
    for call in (lambda: check_trl_algorithm(algorithm), lambda: EntropyShapedGRPOTrainer(algorithm=algorithm)):
        with pytest.raises(ValueError, match=pattern) as err:
            call()
        assert "\n" not in str(err.value)
        assert re.search(instead, str(err.value)), str(err.value)


def test_dual_clip_is_refused(monkeypatch):
    dual = algorithms.get_algorithm("dapo").replace(name="dapo_dual_clip", clip_ratio_c=3.0)
    monkeypatch.setitem(algorithms.ALGORITHMS, dual.name, dual)
    with pytest.raises(ValueError, match=r"^dapo_dual_clip: clip_ratio_c \(verl's dual clip\) has no TRL counterpart"):
        EntropyShapedGRPOTrainer(algorithm="dapo_dual_clip")
    assert check_trl_algorithm("gtpo_surprisal") is algorithms.get_algorithm("gtpo_surprisal")


def test_unknown_algorithm_is_rejected(tmp_path):
    with pytest.raises((KeyError, ValueError), match="nope"):
        make_trainer(tmp_path, "nope")
