"""verl integration, on CPU inside verl 0.9.1 (``.venv-verl``): the registered estimators give
``workbench.gtpo``/``grpo_s`` (and ``entropy_advantage``, GTPO/GRPO-S on the surprisal) of the
grouped tensors on verl's data layout, the patched trainer code (legacy and v1) hands them the
old policy's entropies and log-probs, ``verl_overrides`` configures verl's own Clip-Cov and KL-Cov
losses (equal to the workbench's loss modes on a random batch), and the methods verl cannot carry
are refused.

Run by tests/test_verl_integration.py; directly: ``.venv-verl/bin/python -m pytest tests/inside_verl``.
"""

import json
import os
import random
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from tensordict import TensorDict
from verl.protocol import DataProto
from verl.trainer.ppo import core_algos, ray_trainer
from verl.utils import tensordict_utils as tu

import workbench
from workbench import advantages as adv
from workbench import algorithms, losses
from workbench.integrations import verl as wv

ROOT = Path(__file__).resolve().parents[2]
ATOL = 1e-6
FUNCS = {"gtpo": workbench.gtpo, "grpo_s": workbench.grpo_s}

wv.register()


# ---------------------------------------------------------------- verl's layout


def grouped_batch(G=5, n=4, T=7, seed=0):
    """Random groups ``[G, n(, T)]``: binary rewards (both outcomes in most groups), right padding."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, T + 1, (G, n), generator=g)
    mask = torch.arange(T) < lengths.unsqueeze(-1)
    rewards = (torch.rand(G, n, generator=g) > 0.5).double()
    rewards[:, 0], rewards[:, 1] = 1.0, 0.0
    entropies = torch.rand(G, n, T, generator=g).double() * 3 * mask
    return rewards, entropies, mask


def to_verl(rewards, entropies, mask, seed=0):
    """verl's layout: rows shuffled (groups not contiguous), one uid string per row, the outcome
    reward at the last valid token of ``token_level_rewards``, right-padded ``response_mask``."""
    G, n, T = mask.shape
    rng = random.Random(seed)
    uids = [f"{rng.getrandbits(64):016x}" for _ in range(G)]
    perm = list(range(G * n))
    rng.shuffle(perm)
    perm = torch.tensor(perm)
    flat_mask = mask.reshape(G * n, T)[perm]
    last = flat_mask.long().sum(-1) - 1
    token_level_rewards = torch.zeros(G * n, T)
    token_level_rewards[torch.arange(G * n), last] = rewards.reshape(-1)[perm].float()
    index = np.array([uids[int(i) // n] for i in perm], dtype=object)
    return dict(
        token_level_rewards=token_level_rewards,
        response_mask=flat_mask.long(),
        entropies=entropies.reshape(G * n, T)[perm].float(),
        index=index,
    ), perm


def concat(*batches):
    return {
        k: np.concatenate([b[k] for b in batches]) if k == "index" else torch.cat([b[k] for b in batches])
        for k in batches[0]
    }


def expected(name, rewards, entropies, mask, perm, **kw):
    G, n, T = mask.shape
    return FUNCS[name](rewards, entropies.float(), mask, **kw).reshape(G * n, T)[perm]


def spec_example():
    """The spec's worked example (spec, "Worked example"; also workbench.examples.spec_example)."""
    rewards = torch.tensor([[1.0, 1.0, 0.0, 0.0]])
    entropies = torch.tensor([[[2.0, 4.0, 1.0], [3.0, 1.0, 0.0], [1.0, 4.0, 0.5], [3.0, 0.5, 0.0]]])
    mask = torch.tensor([[[1, 1, 1], [1, 1, 0], [1, 1, 1], [1, 1, 0]]]).bool()
    return rewards, entropies, mask


SPEC_GTPO = torch.tensor(
    [
        [0.930469, 0.999393, 0.947700],
        [0.964931, 0.896007, 0.0],
        [-0.990777, -0.880691, -0.947700],
        [-0.904623, -1.014709, 0.0],
    ]
)
SPEC_GTPO_PER_POLARITY = torch.tensor(
    [[-0.447204, 1.341611, 0.0], [0.447204, -1.341611, 0.0], [-0.764735, 1.189588, 0.0], [0.764735, -1.189588, 0.0]]
)
SPEC_GRPO_S = torch.tensor([0.872069, 0.859957, -0.864182, -0.867844])


def algo_config(estimator="gtpo", **workbench_kwargs):
    cfg = {
        "adv_estimator": estimator,
        "gamma": 1.0,
        "lam": 1.0,
        "use_kl_in_reward": False,
        "norm_adv_by_std_in_grpo": True,
        "rollout_correction": None,
    }
    if workbench_kwargs:
        cfg["workbench"] = workbench_kwargs
    return OmegaConf.create(cfg)


# ---------------------------------------------------------------- the estimators


def test_registry_returns_the_workbench_estimators():
    assert not {"gtpo", "grpo_s"} & {e.value for e in core_algos.AdvantageEstimator}  # no clash with verl's
    for name in ("gtpo", "grpo_s"):
        fn = core_algos.get_adv_estimator_fn(name)
        assert fn is wv.estimator(name) and fn.workbench_algorithm == name
    assert wv.register()["gtpo"] is core_algos.get_adv_estimator_fn("gtpo")  # idempotent
    assert ray_trainer.compute_advantage.__workbench_wrapped__.__module__ == "verl.trainer.ppo.ray_trainer"
    with pytest.raises(ValueError, match="verl already has an advantage estimator named 'grpo'"):
        wv.register(["grpo"])
    with pytest.raises(ValueError, match="unknown algorithm 'gtop'"):
        wv.estimator("gtop")


@pytest.mark.parametrize("name", ["gtpo", "grpo_s"])
def test_matches_workbench_on_verl_layout(name):
    rewards, entropies, mask = grouped_batch(G=6, n=4, T=9, seed=1)
    batch, perm = to_verl(rewards, entropies, mask, seed=2)
    advantages, returns = core_algos.get_adv_estimator_fn(name)(**batch, config=algo_config(name))
    want = expected(name, rewards, entropies, mask, perm)
    assert advantages.shape == (24, 9) and advantages.dtype == torch.float32
    torch.testing.assert_close(advantages, want, atol=ATOL, rtol=0)
    assert torch.equal(returns, advantages)
    assert advantages.abs().sum() > 1.0
    assert torch.all(advantages[batch["response_mask"] == 0] == 0)  # masked positions: exactly 0
    if name == "gtpo":  # token level: entropy shaping varies along a response
        assert (advantages.max(-1).values - advantages.min(-1).values).max() > 0.05
    # rewards spread over the tokens (as with use_kl_in_reward): the outcome is their sum
    spread = batch["token_level_rewards"].clone()
    spread[:, 0] -= 0.25
    spread[torch.arange(24), batch["response_mask"].sum(-1) - 1] += 0.25
    again, _ = core_algos.get_adv_estimator_fn(name)(**{**batch, "token_level_rewards": spread})
    torch.testing.assert_close(again, want, atol=ATOL, rtol=0)


def test_config_overrides_reach_the_workbench_function():
    rewards, entropies, mask = grouped_batch(G=4, n=6, T=5, seed=3)
    batch, perm = to_verl(rewards, entropies, mask, seed=4)
    fn = core_algos.get_adv_estimator_fn("gtpo")
    kw = {"alpha2": 0.3, "normalize": "per_polarity"}
    got, _ = fn(**batch, config=algo_config("gtpo", **kw))
    torch.testing.assert_close(got, expected("gtpo", rewards, entropies, mask, perm, **kw), atol=ATOL, rtol=0)
    default, _ = fn(**batch, config=algo_config("gtpo"))
    assert (got - default).abs().max() > 0.1
    got_s, _ = core_algos.get_adv_estimator_fn("grpo_s")(**batch, config=algo_config("grpo_s", beta2=0.5))
    torch.testing.assert_close(got_s, expected("grpo_s", rewards, entropies, mask, perm, beta2=0.5), atol=ATOL, rtol=0)


def test_spec_worked_example_among_other_groups():
    r0, h0, m0 = spec_example()
    r1, h1, m1 = grouped_batch(G=2, n=4, T=3, seed=5)
    batch, perm = to_verl(torch.cat([r0, r1]), torch.cat([h0.double(), h1]), torch.cat([m0, m1]), seed=6)
    rows = torch.argsort(perm)[:4]  # where the example's responses 0..3 landed
    gtpo, _ = core_algos.get_adv_estimator_fn("gtpo")(**batch, config=algo_config("gtpo"))
    torch.testing.assert_close(gtpo[rows], SPEC_GTPO, atol=1e-5, rtol=0)
    pp, _ = core_algos.get_adv_estimator_fn("gtpo")(**batch, config=algo_config("gtpo", normalize="per_polarity"))
    torch.testing.assert_close(pp[rows], SPEC_GTPO_PER_POLARITY, atol=1e-5, rtol=0)
    grpo_s, _ = core_algos.get_adv_estimator_fn("grpo_s")(**batch, config=algo_config("grpo_s"))
    torch.testing.assert_close(grpo_s[rows], SPEC_GRPO_S[:, None] * m0[0], atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["gtpo", "grpo_s"])
def test_zero_variance_group_gives_zero(name):
    rewards, entropies, mask = grouped_batch(G=3, n=4, T=6, seed=7)
    rewards[1] = 1.0  # every response of group 1 correct
    batch, perm = to_verl(rewards, entropies, mask, seed=8)
    advantages, _ = core_algos.get_adv_estimator_fn(name)(**batch, config=None)
    in_group_1 = (perm // 4) == 1
    assert torch.all(advantages[in_group_1] == 0)
    assert advantages[~in_group_1].abs().sum() > 1.0
    torch.testing.assert_close(advantages, expected(name, rewards, entropies, mask, perm), atol=ATOL, rtol=0)


@pytest.mark.parametrize("name", ["gtpo", "grpo_s"])
def test_padding_rows_and_unequal_groups(name):
    """verl's synthetic padding samples (empty response_mask, a real uid) get 0 and leave their
    group alone; groups of different sizes each equal the workbench function on that group."""
    a = grouped_batch(G=2, n=4, T=6, seed=9)
    b = grouped_batch(G=1, n=3, T=6, seed=10)
    (batch_a, perm_a), (batch_b, perm_b) = to_verl(*a, seed=11), to_verl(*b, seed=12)
    pad = dict(
        token_level_rewards=torch.zeros(1, 6),
        response_mask=torch.zeros(1, 6, dtype=torch.long),
        entropies=torch.rand(1, 6),
        index=batch_a["index"][:1],
    )
    batch = concat(batch_a, batch_b, pad)
    advantages, _ = core_algos.get_adv_estimator_fn(name)(**batch)
    torch.testing.assert_close(advantages[:8], expected(name, *a, perm_a), atol=ATOL, rtol=0)
    torch.testing.assert_close(advantages[8:11], expected(name, *b, perm_b), atol=ATOL, rtol=0)
    assert torch.all(advantages[11] == 0)


def test_errors_are_clear():
    rewards, entropies, mask = grouped_batch(G=2, n=4, T=5, seed=13)
    batch, _ = to_verl(rewards, entropies, mask)
    fn = core_algos.get_adv_estimator_fn("gtpo")
    with pytest.raises(ValueError, match="needs the old policy's per-token entropies.*register"):
        fn(**{**batch, "entropies": None})
    with pytest.raises(ValueError, match=r"entropies has shape \(8, 4\), response_mask \(8, 5\)"):
        fn(**{**batch, "entropies": batch["entropies"][:, :4]})
    with pytest.raises(ValueError, match="must both be"):
        fn(**{**batch, "response_mask": batch["response_mask"][:, :4]})
    with pytest.raises(ValueError, match="no index"):
        fn(**{**batch, "index": None})
    with pytest.raises(ValueError, match="one uid per response"):
        fn(**{**batch, "index": batch["index"][:7]})
    lonely = batch["index"].copy()
    lonely[0] = "only-one"
    with pytest.raises(ValueError, match="'only-one' has 1 response.*rollout.n >= 2"):
        fn(**{**batch, "index": lonely})
    with pytest.raises(TypeError, match="alpha3"):
        fn(**batch, config=algo_config("gtpo", alpha3=1.0))


# ---------------------------------------------------------------- legacy trainer (trainer.use_v1=False)


def legacy_batch(rewards, entropies, mask, seed=0):
    batch, perm = to_verl(rewards, entropies, mask, seed=seed)
    data = DataProto.from_dict(
        tensors={
            "token_level_rewards": batch["token_level_rewards"],
            "response_mask": batch["response_mask"],
            wv.ENTROPY_KEY: batch["entropies"],
        },
        non_tensors={"uid": batch["index"]},
    )
    return data, perm


@pytest.mark.parametrize("name", ["gtpo", "grpo_s"])
def test_legacy_compute_advantage_uses_old_entropys(name):
    rewards, entropies, mask = grouped_batch(G=4, n=4, T=6, seed=14)
    data, perm = legacy_batch(rewards, entropies, mask, seed=15)
    out = ray_trainer.compute_advantage(data, adv_estimator=name, config=algo_config(name))
    torch.testing.assert_close(
        out.batch["advantages"], expected(name, rewards, entropies, mask, perm), atol=ATOL, rtol=0
    )
    assert torch.equal(out.batch["returns"], out.batch["advantages"])
    assert wv.ENTROPY_KEY not in out.batch.keys()  # popped again: the batch is verl's as before
    data, _ = legacy_batch(rewards, entropies, mask)
    data.batch.pop(wv.ENTROPY_KEY)
    with pytest.raises(ValueError, match="needs the old policy's per-token entropies"):
        ray_trainer.compute_advantage(data, adv_estimator=name, config=algo_config(name))


def test_other_estimators_run_through_verl_unchanged():
    rewards, entropies, mask = grouped_batch(G=3, n=4, T=5, seed=16)
    data, _ = legacy_batch(rewards, entropies, mask)
    ref, _ = core_algos.compute_grpo_outcome_advantage(
        data.batch["token_level_rewards"], data.batch["response_mask"], data.non_tensor_batch["uid"]
    )
    rloo_ref, _ = core_algos.compute_rloo_outcome_advantage(
        data.batch["token_level_rewards"], data.batch["response_mask"], data.non_tensor_batch["uid"]
    )
    out = ray_trainer.compute_advantage(data, adv_estimator="grpo", config=algo_config("grpo"))
    torch.testing.assert_close(out.batch["advantages"], ref)
    out = ray_trainer.compute_advantage(data, adv_estimator="rloo", config=algo_config("rloo"))
    torch.testing.assert_close(out.batch["advantages"], rloo_ref)
    assert wv.ENTROPY_KEY in out.batch.keys()  # only the workbench estimators consume it


class StubActorWorkers:
    """In place of verl's actor worker group: per-token entropies of the whole (unpadded)
    sequence, ``0.1 * (position + 1) + row``, so the response slice is known exactly."""

    def compute_log_prob(self, batch_td):
        ids = batch_td["input_ids"]  # nested [bs, prompt_len_i + response_len_i]
        ent = [0.1 * (torch.arange(len(x), dtype=torch.float32) + 1) + i for i, x in enumerate(ids.unbind())]
        nested = torch.nested.as_nested_tensor(ent, layout=torch.jagged)
        output = tu.get_tensordict({"entropy": nested, "log_probs": -nested})
        tu.assign_non_tensor(output, metrics={"mfu": 0.0})
        return output


def rollout_batch(G=3, n=4, P=4, R=6, seed=17):
    """A verl rollout batch: left-padded prompts, right-padded responses, uids, rewards."""
    g = torch.Generator().manual_seed(seed)
    bs = G * n
    prompt_len = torch.randint(1, P + 1, (bs,), generator=g)
    resp_len = torch.randint(1, R + 1, (bs,), generator=g)
    prompt_mask = (torch.arange(P) >= P - prompt_len[:, None]).long()
    response_mask = (torch.arange(R) < resp_len[:, None]).long()
    prompts = torch.randint(5, 50, (bs, P), generator=g) * prompt_mask
    responses = torch.randint(5, 50, (bs, R), generator=g) * response_mask
    attention_mask = torch.cat([prompt_mask, response_mask], 1)
    rewards = torch.zeros(bs, R)
    rewards[torch.arange(bs), resp_len - 1] = torch.tensor([1.0, 0.0, 1.0, 0.0] * G)[:bs]
    rng = random.Random(seed)
    order = list(range(bs))
    rng.shuffle(order)
    uid = np.array([f"prompt-{i // n}" for i in order], dtype=object)
    data = DataProto.from_dict(
        tensors={
            "prompts": prompts,
            "responses": responses,
            "input_ids": torch.cat([prompts, responses], 1),
            "attention_mask": attention_mask,
            "position_ids": (attention_mask.cumsum(1) - 1).clamp(min=0),
            "response_mask": response_mask,
        },
        non_tensors={"uid": uid},
    )
    # what the stub's entropies are at response token t: position prompt_len - 1 + t of the row
    want_entropy = (0.1 * (prompt_len[:, None] + torch.arange(R)) + torch.arange(bs)[:, None]) * response_mask
    return data, rewards, want_entropy


@pytest.mark.parametrize("name", ["gtpo", "grpo_s"])
def test_legacy_fit_loop_routes_entropies(name):
    """verl's own ``RayPPOTrainer._compute_old_log_prob`` (stub worker group), then the fit loop's
    steps: pop "entropys", union, compute_advantage. The estimator sees the old entropies."""
    cfg = OmegaConf.create({"algorithm": algo_config(name), "actor_rollout_ref": {"actor": {}}})
    trainer = types.SimpleNamespace(config=cfg, actor_rollout_wg=StubActorWorkers())
    batch, rewards, want_entropy = rollout_batch()
    old_log_prob, _mfu = ray_trainer.RayPPOTrainer._compute_old_log_prob(trainer, batch)
    torch.testing.assert_close(old_log_prob.batch[wv.ENTROPY_KEY], want_entropy)
    old_log_prob.batch.pop("entropys")  # as RayPPOTrainer.fit does
    batch = batch.union(old_log_prob)
    batch.batch["token_level_rewards"] = rewards
    batch = ray_trainer.compute_advantage(batch, adv_estimator=name, num_repeat=4, config=cfg.algorithm)
    direct, _ = wv.estimator(name)(
        rewards, batch.batch["response_mask"], batch.non_tensor_batch["uid"], entropies=want_entropy
    )
    torch.testing.assert_close(batch.batch["advantages"], direct, atol=ATOL, rtol=0)
    # and the direct call is the workbench function on the groups
    uid = batch.non_tensor_batch["uid"]
    for u in set(uid):
        rows = torch.tensor(np.flatnonzero(uid == u))
        want = FUNCS[name](
            rewards[rows].sum(-1)[None], want_entropy[rows][None], batch.batch["response_mask"][rows][None].bool()
        )[0]
        torch.testing.assert_close(direct[rows], want, atol=ATOL, rtol=0)
    plain = OmegaConf.create({"algorithm": algo_config("grpo"), "actor_rollout_ref": {"actor": {}}})
    other, _ = ray_trainer.RayPPOTrainer._compute_old_log_prob(
        types.SimpleNamespace(config=plain, actor_rollout_wg=StubActorWorkers()), rollout_batch()[0]
    )
    assert wv.ENTROPY_KEY not in other.batch.keys()


# ---------------------------------------------------------------- v1 trainer (the default)


class FakeTransferQueue:
    """In-memory stand-in for TransferQueue's kv_batch_get/kv_batch_put (per-sample fields,
    variable-length ones returned as jagged nested tensors, as verl's v1 trainer stores them)."""

    def __init__(self):
        self.store = {}

    def put(self, keys, partition_id, fields=None, tags=None):
        for name in fields.keys():
            value = tu.get(fields, name)  # a tensor, or a list for per-sample strings
            items = value.unbind() if isinstance(value, torch.Tensor) else value
            for key, item in zip(keys, items):
                self.store.setdefault((partition_id, key), {})[name] = item
        from transfer_queue import KVBatchMeta

        return KVBatchMeta(keys=list(keys), tags=[{} for _ in keys], partition_id=partition_id)

    def get(self, keys, partition_id, select_fields=None):
        rows = [self.store[(partition_id, k)] for k in keys]
        out = {}
        for name in select_fields:
            if all(name in r for r in rows):
                vals = [r[name] for r in rows]
                out[name] = (
                    torch.nested.as_nested_tensor(vals, layout=torch.jagged)
                    if isinstance(vals[0], torch.Tensor)
                    else vals
                )
        return TensorDict(out, batch_size=[len(keys)])


@pytest.fixture
def fake_tq(monkeypatch):
    import transfer_queue

    fake = FakeTransferQueue()
    monkeypatch.setattr(transfer_queue, "kv_batch_get", fake.get)
    monkeypatch.setattr(transfer_queue, "kv_batch_put", fake.put)
    return fake


def v1_trainer(name, **algo):
    cfg = OmegaConf.create({"algorithm": {**algo_config(name), **algo}, "actor_rollout_ref": {"rollout": {"n": 4}}})
    return types.SimpleNamespace(config=cfg)


@pytest.mark.parametrize("name", ["gtpo", "grpo_s"])
def test_v1_compute_advantage_reads_entropies_from_transfer_queue(fake_tq, name):
    """verl's own v1 ``PPOTrainer._compute_advantage`` on a TransferQueue holding what the
    old-log-prob pass wrote ("entropy", per sample): the advantages are the workbench's."""
    from transfer_queue import KVBatchMeta
    from verl.trainer.ppo.v1 import trainer_base
    from verl.trainer.ppo.v1 import utils as v1_utils

    assert hasattr(v1_utils.compute_advantage, "__workbench_wrapped__")
    rewards, entropies, mask = grouped_batch(G=3, n=4, T=6, seed=18)
    batch, perm = to_verl(rewards, entropies, mask, seed=19)
    lengths = batch["response_mask"].sum(-1)
    keys = [f"{u}_0_{i}" for i, u in enumerate(batch["index"])]  # verl's {uid}_{session}_{index}

    def per_sample(x):
        return torch.nested.as_nested_tensor([row[:length] for row, length in zip(x, lengths)], layout=torch.jagged)

    fake_tq.put(
        keys,
        "train",
        TensorDict(
            {
                "uid": list(batch["index"]),
                "response_mask": per_sample(batch["response_mask"]),
                "rm_scores": per_sample(batch["token_level_rewards"]),
                "old_log_probs": per_sample(-batch["entropies"]),
                "entropy": per_sample(batch["entropies"]),
            },
            batch_size=[len(keys)],
        ),
    )
    meta = KVBatchMeta(keys=keys, tags=[{} for _ in keys], partition_id="train")
    trainer_base.PPOTrainer._compute_advantage(v1_trainer(name), meta, metrics={})
    got = fake_tq.get(keys, "train", ["advantages", "returns"]).to_padded_tensor()
    want = expected(name, rewards, entropies, mask, perm)
    torch.testing.assert_close(got["advantages"], want, atol=ATOL, rtol=0)
    torch.testing.assert_close(got["returns"], want, atol=ATOL, rtol=0)
    assert wv._V1_ENTROPIES.get() is None  # nothing left behind for the next batch
    with pytest.raises(ValueError, match="bypass_mode=True skips the old-log-prob pass"):
        trainer_base.PPOTrainer._compute_advantage(
            v1_trainer(name, rollout_correction={"bypass_mode": True}), meta, metrics={}
        )


# ---------------------------------------------------------------- the example config and Ray


def compose_example(*overrides):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "data" / "verl"), version_base=None):
        return compose("gtpo", overrides=["actor_rollout_ref.rollout.name=vllm", *overrides])


def test_example_config_composes_and_passes_verl_validation():
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import validate_config

    cfg = compose_example()
    validate_config(config=cfg, use_reference_policy=need_reference_policy(cfg), use_critic=need_critic(cfg))
    assert cfg.algorithm.adv_estimator == "gtpo" and cfg.algorithm.filter_groups.enable
    actor = cfg.actor_rollout_ref.actor
    assert (actor.clip_ratio_low, actor.clip_ratio_high, actor.loss_agg_mode) == (0.2, 0.28, "token-mean")
    assert cfg.actor_rollout_ref.rollout.n == 16 and not actor.use_kl_loss
    env_vars = cfg.ray_kwargs.ray_init.runtime_env.env_vars
    assert env_vars.VERL_USE_EXTERNAL_MODULES == "workbench.integrations.verl_plugin"
    # its workbench keyword arguments work for both estimators
    rewards, entropies, mask = grouped_batch(G=2, n=4, T=5, seed=20)
    batch, perm = to_verl(rewards, entropies, mask)
    for name in ("gtpo", "grpo_s"):
        algorithm = compose_example(f"algorithm.adv_estimator={name}").algorithm
        got, _ = core_algos.get_adv_estimator_fn(name)(**batch, config=algorithm)
        torch.testing.assert_close(got, expected(name, rewards, entropies, mask, perm), atol=ATOL, rtol=0)


def wait_for_exit(pid, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z":
                return  # exited, not yet reaped by its (new) parent
        except (FileNotFoundError, ProcessLookupError):
            return
        time.sleep(0.5)
    os.kill(pid, signal.SIGTERM)
    print(f"stopped Ray worker {pid} after {timeout} s")


def test_plugin_reaches_verls_ray_task_runner(tmp_path):
    """verl's own ``run_ppo`` with the example config starts Ray and its TaskRunner actor; a probe
    in place of the TaskRunner reports that the plugin registered and patched verl *there*."""
    script = tmp_path / "probe.py"
    script.write_text(f"""
import json, os, ray
from hydra import compose, initialize_config_dir
with initialize_config_dir(config_dir={str(ROOT / "data" / "verl")!r}, version_base=None):
    cfg = compose("gtpo", overrides=["actor_rollout_ref.rollout.name=vllm", "ray_kwargs.ray_init.num_cpus=1",
                                     "+ray_kwargs.ray_init.include_dashboard=false"])
from verl.trainer.ppo import core_algos
assert "gtpo" not in core_algos.ADV_ESTIMATOR_REGISTRY, "registered in the driver: the probe would prove nothing"

@ray.remote(num_cpus=0)
class Probe:
    def run(self, config):
        from verl.trainer.ppo import core_algos, ray_trainer
        from verl.trainer.ppo.v1 import trainer_base
        fn = core_algos.ADV_ESTIMATOR_REGISTRY.get("gtpo")
        report = dict(pid=os.getpid(), algorithm=getattr(fn, "workbench_algorithm", None),
                      legacy=hasattr(ray_trainer.RayPPOTrainer._compute_old_log_prob, "__workbench_wrapped__"),
                      v1=hasattr(trainer_base.PPOTrainer._compute_advantage, "__workbench_wrapped__"))
        open({str(tmp_path / "report.json")!r}, "w").write(json.dumps(report))

from verl.trainer.main_ppo import run_ppo
open({str(tmp_path / "driver.json")!r}, "w").write(json.dumps(os.getpid()))
try:
    run_ppo(cfg, task_runner_class=Probe)
finally:
    ray.shutdown()
""")
    env = {k: v for k, v in os.environ.items() if k != "VERL_USE_EXTERNAL_MODULES"}
    env["RAY_AUTH_MODE"] = "disabled"
    proc = subprocess.run(
        [sys.executable, str(script)], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=240
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    wait_for_exit(report["pid"])  # Ray stops its workers asynchronously: leave none behind
    assert report["pid"] != json.loads((tmp_path / "driver.json").read_text())  # another process
    assert report["algorithm"] == "gtpo" and report["legacy"] and report["v1"]


# ---------------------------------------------------------------- the entropy-method family


def surprisal(logp, mask):
    return (-logp).clamp(min=0) * mask


#: the library's function of (rewards [G, n], entropies, logp_old, mask [G, n, T])
FAMILY = {
    "entropy_adv": lambda r, h, lp, m: adv.entropy_advantage(adv.grpo(r, m), h, m, alpha=0.4, kappa=2.0),
    "gtpo_surprisal": lambda r, h, lp, m: adv.gtpo(r, surprisal(lp, m), m),
    "grpo_s_surprisal": lambda r, h, lp, m: adv.grpo_s(r, surprisal(lp, m), m),
}


def family_batch(G=5, n=4, T=7, seed=0):
    """grouped_batch plus the old policy's sampled-token log-probs (not a function of the entropies)."""
    rewards, entropies, mask = grouped_batch(G, n, T, seed)
    g = torch.Generator().manual_seed(seed + 1000)
    logp = -(torch.rand(G, n, T, generator=g).double() * 4) * mask
    return rewards, entropies, logp, mask


def family_to_verl(rewards, entropies, logp, mask, seed=0):
    batch, perm = to_verl(rewards, entropies, mask, seed=seed)
    batch["logp_old"] = logp.reshape(-1, mask.shape[-1])[perm].float()
    return batch, perm


def family_expected(name, rewards, entropies, logp, mask, perm):
    G, n, T = mask.shape
    return FAMILY[name](rewards, entropies.float(), logp.float(), mask).reshape(G * n, T)[perm]


def test_family_estimators_are_registered():
    assert set(wv.DEFAULT_NAMES) == {"gtpo", "grpo_s", *FAMILY}
    assert not set(wv.DEFAULT_NAMES) & {e.value for e in core_algos.AdvantageEstimator}  # no clash with verl's
    for name in FAMILY:
        fn = core_algos.get_adv_estimator_fn(name)
        assert fn is wv.estimator(name) and fn.workbench_algorithm == name


@pytest.mark.parametrize("name", list(FAMILY))
def test_family_matches_library_on_verl_layout(name):
    rewards, entropies, logp, mask = family_batch(G=6, n=4, T=9, seed=21)
    batch, perm = family_to_verl(rewards, entropies, logp, mask, seed=22)
    got, returns = core_algos.get_adv_estimator_fn(name)(**batch, config=algo_config(name))
    want = family_expected(name, rewards, entropies, logp, mask, perm)
    torch.testing.assert_close(got, want, atol=ATOL, rtol=0)
    assert torch.equal(returns, got) and got.abs().sum() > 1.0
    assert torch.all(got[batch["response_mask"] == 0] == 0)
    if name.endswith("_surprisal"):  # the signal is -logp_old, not the entropies
        other = expected(name.removesuffix("_surprisal"), rewards, entropies, mask, perm)
        assert (got - other).abs().max() > 0.05
        torch.testing.assert_close(got, core_algos.get_adv_estimator_fn(name)(**{**batch, "entropies": None})[0])
    else:  # entropy_adv on top of verl's own GRPO advantages
        grpo, _ = core_algos.compute_grpo_outcome_advantage(
            batch["token_level_rewards"], batch["response_mask"], batch["index"]
        )
        h, m = batch["entropies"], batch["response_mask"].bool()
        torch.testing.assert_close(got, adv.entropy_advantage(grpo, h, m), atol=1e-5, rtol=0)
    kw = {"alpha": 0.1, "kappa": 3.0} if name == "entropy_adv" else {}
    if kw:  # algorithm.workbench reaches the function
        tuned, _ = core_algos.get_adv_estimator_fn(name)(**batch, config=algo_config(name, **kw))
        G, n, T = mask.shape
        want = adv.grpo_entropy_advantage(rewards, entropies.float(), mask, **kw).reshape(G * n, T)[perm]
        torch.testing.assert_close(tuned, want, atol=ATOL, rtol=0)


def test_family_errors_are_clear():
    rewards, entropies, logp, mask = family_batch(G=2, n=4, T=5, seed=23)
    batch, _ = family_to_verl(rewards, entropies, logp, mask)
    with pytest.raises(ValueError, match=r"gtpo_surprisal needs the old policy's per-token log-probs.*register\(\)"):
        core_algos.get_adv_estimator_fn("gtpo_surprisal")(**{**batch, "logp_old": None})
    with pytest.raises(ValueError, match=r"logp_old has shape \(8, 4\), response_mask \(8, 5\)"):
        core_algos.get_adv_estimator_fn("grpo_s_surprisal")(**{**batch, "logp_old": batch["logp_old"][:, :4]})
    with pytest.raises(ValueError, match="entropy_adv needs the old policy's per-token entropies"):
        core_algos.get_adv_estimator_fn("entropy_adv")(**{**batch, "entropies": None})


@pytest.mark.parametrize("name", ["gtpo_surprisal", "entropy_adv"])
def test_legacy_compute_advantage_routes_family_inputs(name):
    """verl's compute_advantage (legacy): the surprisal estimators read the batch's old_log_probs,
    entropy_adv the old entropies; both equal the library's function."""
    rewards, entropies, logp, mask = family_batch(G=4, n=4, T=6, seed=24)
    data, perm = legacy_batch(rewards, entropies, mask, seed=25)
    data.batch[wv.LOGP_KEY] = logp.reshape(16, 6)[perm].float()
    out = ray_trainer.compute_advantage(data, adv_estimator=name, config=algo_config(name))
    want = family_expected(name, rewards, entropies, logp, mask, perm)
    torch.testing.assert_close(out.batch["advantages"], want, atol=ATOL, rtol=0)
    assert wv.LOGP_KEY in out.batch.keys()  # verl's own field stays for the actor's update


def test_v1_surprisal_reads_old_log_probs_not_entropies(fake_tq):
    """v1 ``PPOTrainer._compute_advantage``: gtpo_surprisal weights by the TransferQueue's
    old_log_probs; it needs no entropy field, and bypass_mode (old_log_probs := the rollout's) is fine."""
    from transfer_queue import KVBatchMeta
    from verl.trainer.ppo.v1 import trainer_base

    rewards, entropies, logp, mask = family_batch(G=3, n=4, T=6, seed=26)
    batch, perm = family_to_verl(rewards, entropies, logp, mask, seed=27)
    lengths = batch["response_mask"].sum(-1)
    keys = [f"{u}_0_{i}" for i, u in enumerate(batch["index"])]

    def per_sample(x):
        return torch.nested.as_nested_tensor([row[:length] for row, length in zip(x, lengths)], layout=torch.jagged)

    fields = {
        "uid": list(batch["index"]),
        "response_mask": per_sample(batch["response_mask"]),
        "rm_scores": per_sample(batch["token_level_rewards"]),
        "old_log_probs": per_sample(batch["logp_old"]),
    }
    fake_tq.put(keys, "train", TensorDict(fields, batch_size=[len(keys)]))
    meta = KVBatchMeta(keys=keys, tags=[{} for _ in keys], partition_id="train")
    want = family_expected("gtpo_surprisal", rewards, entropies, logp, mask, perm)
    bypass = v1_trainer("gtpo_surprisal", rollout_correction={"bypass_mode": True})
    for trainer in (v1_trainer("gtpo_surprisal"), bypass):
        trainer_base.PPOTrainer._compute_advantage(trainer, meta, metrics={})
        got = fake_tq.get(keys, "train", ["advantages"]).to_padded_tensor()
        torch.testing.assert_close(got["advantages"], want, atol=ATOL, rtol=0)


# ---------------------------------------------------------------- verl's configuration: verl_overrides


def compose_for(algorithm):
    return compose_example(*wv.hydra_overrides(algorithm))


ACCEPTED = ["clip_cov", "kl_cov", "gtpo", "grpo_s", "entropy_adv", "gtpo_surprisal", "grpo_s_surprisal", "dapo", "grpo"]


@pytest.mark.parametrize("name", ACCEPTED)
def test_overrides_compose_and_pass_verl_validation(name):
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import validate_config

    algo = algorithms.get_algorithm(name)
    cfg = compose_for(name)
    validate_config(config=cfg, use_reference_policy=need_reference_policy(cfg), use_critic=need_critic(cfg))
    actor = cfg.actor_rollout_ref.actor
    native = name in ("clip_cov", "kl_cov", "dapo", "grpo")
    assert cfg.algorithm.adv_estimator == ("grpo" if native else name)
    assert core_algos.get_adv_estimator_fn(cfg.algorithm.adv_estimator) is not None  # registered
    assert (actor.clip_ratio_low, actor.clip_ratio_high, actor.loss_agg_mode) == (algo.eps_low, algo.eps_high, algo.agg)
    assert actor.policy_loss.loss_mode == algo.loss_mode and not actor.use_kl_loss
    assert cfg.algorithm.filter_groups.enable == algo.dynamic_sampling
    if name == "kl_cov":
        assert (actor.policy_loss.kl_cov_ratio, actor.policy_loss.ppo_kl_coef) == (0.002, 1.0)  # verl's yaml: 0.1
        assert core_algos.get_policy_loss_fn("kl_cov") is core_algos.compute_policy_loss_kl_cov
    if name == "clip_cov":
        p = actor.policy_loss
        assert (p.clip_cov_ratio, p.clip_cov_lb, p.clip_cov_ub) == (2e-4, 1.0, 5.0)


def loss_batch(B=8, T=12, seed=30):
    g = torch.Generator().manual_seed(seed)
    mask = torch.arange(T) < torch.randint(2, T + 1, (B, 1), generator=g)
    old = -torch.rand(B, T, generator=g) * 3
    new = old + 0.3 * torch.randn(B, T, generator=g)
    advantages = torch.randn(B, T, generator=g) * 2
    return new, old, advantages, mask


@pytest.mark.parametrize(
    "name,options",
    [
        ("kl_cov", {}),
        ("kl_cov", {"kl_cov_ratio": 0.2, "ppo_kl_coef": 0.5}),
        ("clip_cov", {"clip_cov_ratio": 1.0}),  # every candidate is chosen: verl's random draw does not matter
        ("clip_cov", {"clip_cov_ratio": 1.0, "clip_cov_lb": 0.2, "clip_cov_ub": 3.0}),
    ],
)
def test_verls_native_loss_equals_workbench_loss_mode(name, options):
    """verl's own compute_policy_loss_{clip,kl}_cov, configured by verl_overrides, gives the
    workbench's policy_loss(loss_mode=...) with the algorithm's loss settings on a random batch."""
    from verl.utils.config import omega_conf_to_dataclass

    base = algorithms.get_algorithm(name)
    algo = base.replace(loss_mode_kwargs={**base.loss_mode_kwargs, **options})
    cfg = compose_for(algo)
    actor = omega_conf_to_dataclass(cfg.actor_rollout_ref.actor)
    fn = core_algos.get_policy_loss_fn(cfg.actor_rollout_ref.actor.policy_loss.loss_mode)
    new, old, advantages, mask = loss_batch()
    got, verl_metrics = fn(
        old_log_prob=old, log_prob=new, advantages=advantages, response_mask=mask, loss_agg_mode=actor.loss_agg_mode,
        config=actor,
    )  # fmt: skip
    want, metrics = losses.policy_loss(new, old, advantages, mask, **algo.loss_kwargs())
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)
    frac = metrics[f"{name}_frac"]
    assert frac > 0  # the mode acted on some token
    if name == "clip_cov":
        assert verl_metrics["actor/pg_clipfrac"] == pytest.approx(frac, abs=1e-6)
    plain, _ = losses.policy_loss(new, old, advantages, mask, **{**algo.loss_kwargs(), "loss_mode": "vanilla"})
    assert abs(float(plain) - float(want)) > 1e-4  # and the mode changes the loss


@pytest.mark.parametrize(
    "name,pattern",
    [
        ("dapo_forking", r"^dapo_forking: forking tokens need the entropies inside the policy loss.*TRL's top_entropy"),
        ("erc", r"^erc: loss_mode 'erc' needs the current and old entropies.*--algorithm erc\)$"),
    ],
)
def test_methods_verl_cannot_carry_are_refused(name, pattern):
    calls = (wv.verl_overrides, wv.hydra_overrides, wv.estimator, wv.check_verl_algorithm, lambda n: wv.register([n]))
    for call in calls:
        with pytest.raises(ValueError, match=pattern):
            call(name)
    assert name not in core_algos.ADV_ESTIMATOR_REGISTRY


@pytest.mark.parametrize("name", ["clip_cov", "kl_cov"])
def test_loss_modes_are_not_estimators(name):
    with pytest.raises(ValueError, match=rf"^{name}: its advantages are GRPO's.*verl_overrides\('{name}'\)$"):
        wv.estimator(name)
