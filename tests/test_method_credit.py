"""One batch, every method (workbench.viz.method_credit, Algorithm.token_credit): the table's numbers
are the library's own function calls on a hand-made group; dropped and frozen tokens show as such."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from workbench import viz
from workbench.algorithms import get_algorithm
from workbench.examples import spec_example
from workbench.losses import clip_cov_tokens, erc_keep, kl_cov_tokens, top_entropy_mask
from workbench.viz.method_credit import DEFAULT_METHODS

ROOT = Path(__file__).resolve().parents[1]
#: entropy-methods.md's KL-Cov example: logp (current policy) and logp_old (behaviour, the logged one).
LOGP = [[-0.5, -1.2, -2.0], [-0.3, -0.9], [-1.5, -0.2, -2.5], [-0.8, -1.1]]
LOGP_OLD = [[-0.6, -1.0, -2.0], [-0.35, -0.9], [-1.4, -0.3, -2.2], [-0.8, -1.3]]
#: its ERC example's current entropies.
H_NEW = [[2.1, 3.9, 1.2], [3.0, 0.9], [1.0, 4.3, 0.5], [2.8, 0.5]]


def _record():
    """The spec example's group as a samples.jsonl record, with the KL-Cov example's behaviour log-probs."""
    ex = spec_example()
    responses = []
    for i in range(4):
        n = int(ex["mask"][i].sum())
        reward = float(ex["rewards"][i])
        tokens = [f"t{i}{t}" for t in range(n)]
        entropies = ex["entropies"][i, :n].tolist()
        responses.append(
            {
                "tokens": tokens,
                "entropies": entropies,
                "logprobs": LOGP_OLD[i],
                "reward": reward,
                "correct": reward > 0.5,
            }
        )
    return {"step": 3, "group": 0, "prompt": "1+1=", "responses": responses}


def _tensors():
    ex = spec_example()
    logp_old = torch.zeros(4, 3)
    for i, row in enumerate(LOGP_OLD):
        logp_old[i, : len(row)] = torch.tensor(row)
    return ex["rewards"], ex["entropies"], ex["mask"], logp_old


def _grid(table, method, column):
    rows = table[table["method"] == method]
    out = np.full((4, 3), np.nan if column != "status" else "", dtype=object if column == "status" else float)
    out[rows["response"], rows["position"]] = rows[column]
    return out


def test_the_table_holds_each_methods_own_advantages():
    rewards, entropies, mask, logp_old = _tensors()
    table = viz.method_credit_table(_record())
    assert list(dict.fromkeys(table["method"])) == list(DEFAULT_METHODS)
    assert len(table) == 10 * len(DEFAULT_METHODS)  # every valid token of every method
    for name in DEFAULT_METHODS:
        direct = get_algorithm(name).advantages(rewards, entropies, mask, logp_old=logp_old).numpy()
        got = _grid(table, name, "advantage")
        np.testing.assert_allclose(got[mask.numpy()], direct[mask.numpy()], atol=1e-6, err_msg=name)
    # the spec's worked example of the entropy advantage (GRPO's +-0.866024, alpha 0.4, kappa 2)
    np.testing.assert_allclose(_grid(table, "entropy_adv", "advantage")[0], [1.299036, 1.299036, 1.266024], atol=1e-5)


def test_gradient_weights_are_the_hand_worked_ones():
    """w = -N dL/dlogp: the advantage under token-mean (DAPO); GRPO's per-response mean gives a
    response of length L the weight A * N / (n * L) = A * 10 / (4 L)."""
    table = viz.method_credit_table(_record())
    a = 0.866024
    dapo = _grid(table, "dapo", "weight")
    np.testing.assert_allclose(dapo[:, :2], [[a, a], [a, a], [-a, -a], [-a, -a]], atol=1e-5)
    grpo = _grid(table, "grpo", "weight")
    np.testing.assert_allclose(grpo[:, 0], [a * 10 / 12, a * 10 / 8, -a * 10 / 12, -a * 10 / 8], atol=1e-5)
    status = _grid(table, "dapo", "status")
    assert set(status[:2].ravel()) - {""} == {"credited"} and set(status[2:].ravel()) - {""} == {"penalised"}


def test_forking_tokens_show_as_dropped_with_no_weight():
    rewards, entropies, mask, _ = _tensors()
    table = viz.method_credit_table(_record(), ["dapo_forking"])
    keep = top_entropy_mask(entropies, mask, 0.2).numpy()
    status, weight = _grid(table, "dapo_forking", "status"), _grid(table, "dapo_forking", "weight")
    valid = mask.numpy()
    assert np.array_equal(status[valid] == "dropped", ~keep[valid])
    assert np.argwhere(keep).tolist() == [[0, 1], [2, 1]]  # the spec's rho = 0.2: the two 4.0s
    np.testing.assert_allclose(weight[valid & ~keep], 0.0)
    np.testing.assert_allclose(weight[keep], [0.866024, -0.866024], atol=1e-5)
    looser = viz.method_credit_table(_record(), ["dapo_forking"], top_entropy_quantile=0.5)
    assert (_grid(looser, "dapo_forking", "status") != "dropped")[valid].sum() == 5  # the spec's rho = 0.5


def test_clip_cov_drops_the_tokens_its_selection_draws():
    rewards, entropies, mask, logp_old = _tensors()
    settings = {"clip_cov_ratio": 0.2, "clip_cov_lb": 0.0, "clip_cov_ub": 5.0}
    table = viz.method_credit_table(_record(), ["clip_cov"], seed=3, **settings)
    advantages = get_algorithm("clip_cov").advantages(rewards, entropies, mask)
    drawn = clip_cov_tokens(
        logp_old, logp_old, advantages, mask, **settings, generator=torch.Generator().manual_seed(3)
    ).numpy()
    assert drawn.sum() == 2  # k = int(0.2 * 10)
    status, weight = _grid(table, "clip_cov", "status"), _grid(table, "clip_cov", "weight")
    assert np.array_equal(status == "dropped", drawn)
    np.testing.assert_allclose(weight[drawn], 0.0)
    np.testing.assert_allclose(weight[mask.numpy() & ~drawn], advantages.numpy()[mask.numpy() & ~drawn], atol=1e-6)
    assert "PPO clips nothing" in table.attrs["notes"]["clip_cov"][0]


def test_kl_cov_and_erc_freeze_only_with_a_current_policy():
    """On the logged (behaviour) policy alone KL-Cov's penalty is 0 and ERC clips nothing, and the
    notes say so; with the current policy's numbers they act as the spec's worked examples."""
    rewards, entropies, mask, logp_old = _tensors()
    behaviour = viz.method_credit_table(_record(), ["kl_cov", "erc"])
    assert "penalty is 0" in behaviour.attrs["notes"]["kl_cov"][0]
    assert "clips nothing" in behaviour.attrs["notes"]["erc"][0]
    assert (_grid(behaviour, "erc", "status") != "frozen").all()

    current = viz.method_credit_table(
        _record(), ["kl_cov", "erc"], logprobs_new=LOGP, entropies_new=H_NEW, kl_cov_ratio=0.2
    )
    assert current.attrs["notes"] == {"kl_cov": [], "erc": []}
    frozen = _grid(current, "kl_cov", "status") == "frozen"
    assert np.argwhere(frozen).tolist() == [[1, 0], [2, 2]]  # the spec's k = 2: (2,2) and (1,0)
    logp = torch.tensor([row + [0.0] * (3 - len(row)) for row in LOGP])
    advantages = get_algorithm("kl_cov").advantages(rewards, entropies, mask)
    assert np.array_equal(frozen, kl_cov_tokens(advantages, logp, mask, kl_cov_ratio=0.2).numpy())
    h_new = torch.tensor([row + [0.0] * (3 - len(row)) for row in H_NEW])
    keep = erc_keep(h_new, entropies, mask).numpy()
    erc_status, erc_weight = _grid(current, "erc", "status"), _grid(current, "erc", "weight")
    assert np.argwhere(keep).tolist() == [[0, 0], [0, 1], [1, 0], [2, 0], [2, 2], [3, 1]]  # the spec's example
    assert np.array_equal(erc_status == "frozen", mask.numpy() & ~keep)
    np.testing.assert_allclose(erc_weight[mask.numpy() & ~keep], 0.0)  # detached: no gradient


def test_the_figure_draws_the_tables_numbers_dropped_grey_and_frozen_framed():
    record = _record()
    table = viz.method_credit_table(record, kl_cov_ratio=0.2, logprobs_new=LOGP)
    fig = viz.method_credit(record, kl_cov_ratio=0.2, logprobs_new=LOGP)
    by_kind = {}
    for trace in fig.data:
        for method in trace.meta["methods"]:
            by_kind[(method, trace.meta["kind"])] = trace
    forking = table[table["method"] == "dapo_forking"]
    dropped = np.array(by_kind[("dapo_forking", "dropped")].z, dtype=float)
    assert sorted(map(list, np.argwhere(np.isfinite(dropped)))) == sorted(
        forking[forking["status"] == "dropped"][["response", "position"]].values.tolist()
    )
    weights = np.array(by_kind[("gtpo", "weight")].z, dtype=float)
    np.testing.assert_allclose(weights[~np.isnan(weights)], table[table["method"] == "gtpo"]["weight"], atol=1e-12)
    frames = by_kind[("kl_cov", "frozen")]
    assert list(frames.x) == [0, 2] and [y.split()[0] for y in frames.y] == ["#1", "#2"]
    titles = " ".join(a.text for a in fig.layout.annotations)
    assert "DAPO = " in titles and "ERC" in titles and "clips nothing" in titles  # ERC equals DAPO at ratio 1
    assert "8 dropped of 10 tokens" in titles
    assert fig.layout.coloraxis.cmax == pytest.approx(float(table["weight"].abs().max()))
    hover = by_kind[("gtpo", "weight")].hovertext[0][1]
    assert "gradient weight" in hover and "t01" in hover


def test_a_group_without_log_probs_skips_the_methods_that_need_them():
    group = viz.synthetic_group(4, 5)
    table = viz.method_credit_table(group)
    shown = set(table["method"])
    assert {"clip_cov", "kl_cov", "gtpo_surprisal", "grpo_s_surprisal"}.isdisjoint(shown)
    assert {"gtpo", "dapo_forking", "erc", "entropy_adv"} <= shown
    assert "no log-probs" in table.attrs["notes"]["kl_cov"][0]
    with pytest.raises(ValueError, match="value must be one of"):
        viz.method_credit(group, value="entropy")


def test_a_logged_run_group_is_drawn():
    """A stored run's samples.jsonl (the last mixed group), every method on it."""
    run = ROOT / "data" / "results" / "accuracy" / "runs" / "default" / "gtpo-s0"
    fig = viz.method_credit(run, max_responses=4)
    table = viz.method_credit_table(run)
    assert set(table["method"]) == set(DEFAULT_METHODS)
    forking = table[table["method"] == "dapo_forking"]
    assert 0.6 < (forking["status"] == "dropped").mean() < 0.9  # about 80% of the tokens
    assert all(len(t.y) == 4 for t in fig.data if t.meta["kind"] == "weight")


def test_the_method_explorer_redraws_as_its_controls_move():
    explorer = viz.method_explorer(_record())
    forking = explorer.table[explorer.table["method"] == "dapo_forking"]
    assert (forking["status"] != "dropped").sum() == 2  # rho = 0.2: the two 4.0s
    cmax = explorer.figure.layout.coloraxis.cmax
    explorer.top_entropy_quantile.value = 0.5
    forking = explorer.table[explorer.table["method"] == "dapo_forking"]
    assert (forking["status"] != "dropped").sum() == 5  # the spec's rho = 0.5
    titles = " ".join(a.text for a in explorer.figure.layout.annotations)
    assert "5 dropped of 10 tokens" in titles
    assert explorer.figure.layout.coloraxis.cmax == cmax  # the colour scale stays while settings move
    explorer.methods.value = ("gtpo", "erc")
    assert set(explorer.table["method"]) == {"gtpo", "erc"}
    explorer.value.value = "advantage"
    assert {t.meta["kind"] for t in explorer.figure.data} == {"advantage", "dropped", "frozen"}
