"""Reward terms: DAPO overlong shaping and GROP, against hand-worked values."""

import pytest
import torch

from workbench.rewards import grop_penalty, overlong_penalty


def test_overlong_penalty_hand_values():
    # L_max 100, cache 20: free up to 80, linear to -1 at 100, -1 beyond (TRL's example: 90 -> -0.5).
    out = overlong_penalty(torch.tensor([10, 80, 90, 100, 101]), max_len=100, cache_len=20)
    torch.testing.assert_close(out, torch.tensor([0.0, 0.0, -0.5, -1.0, -1.0]))


def test_grop_easy_group_penalises_long_correct_ones():
    # 4 of 4 correct (easy): knee over correct lengths [10, 20, 30, 60]: max((10+60)/2, 30) = 35.
    r = torch.tensor([1.0, 1.0, 1.0, 1.0])
    n = torch.tensor([10, 20, 30, 60])
    torch.testing.assert_close(grop_penalty(r, n), torch.tensor([0.0, 0.0, 0.0, -0.5 * 25 / 35]))


def test_grop_medium_majority_correct_penalises_correct():
    # 2 of 4 correct: c > n - c is false -> penalise the wrong ones; knee over all lengths.
    r = torch.tensor([1.0, 1.0, 0.0, 0.0])
    n = torch.tensor([10, 50, 40, 100])  # knee = max((10+100)/2, 50) = 55
    torch.testing.assert_close(grop_penalty(r, n), torch.tensor([0.0, 0.0, 0.0, -0.5 * 45 / 55]))
    r = torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0])  # 3 of 5 (medium, frac 0.6): penalise correct
    n = torch.tensor([10, 60, 100, 40, 200])  # knee = max(105, 82) = 105
    torch.testing.assert_close(grop_penalty(r, n), torch.tensor([0.0, 0.0, 0.0, 0.0, 0.0]))
    n = torch.tensor([10, 60, 150, 40, 20])  # knee = max(80, 56) = 80; 150 -> -0.5 * 70 / 80
    torch.testing.assert_close(grop_penalty(r, n), torch.tensor([0.0, 0.0, -0.5 * 70 / 80, 0.0, 0.0]))


def test_grop_hard_group_no_penalty_and_batched():
    r = torch.tensor([[1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    n = torch.tensor([[90, 10, 10, 10], [10, 20, 30, 60]])
    out = grop_penalty(r, n)
    assert bool((out[0] == 0).all())
    assert float(out[1, 3]) == pytest.approx(-0.5 * 25 / 35)


def test_errors():
    with pytest.raises(ValueError, match="cache_len"):
        overlong_penalty(torch.tensor([1]), max_len=10, cache_len=20)
    with pytest.raises(ValueError, match="max_len must be > 0"):
        overlong_penalty(torch.tensor([1]), max_len=0, cache_len=0)
    with pytest.raises(ValueError, match="lengths has shape"):
        grop_penalty(torch.ones(4), torch.ones(3))
    with pytest.raises(ValueError, match="gamma1 must be in"):
        grop_penalty(torch.ones(4), torch.ones(4), gamma1=0.4)
    with pytest.raises(ValueError, match="lengths must be >= 1"):
        grop_penalty(torch.ones(2), torch.tensor([0, 3]))
