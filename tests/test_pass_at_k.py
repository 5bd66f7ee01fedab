"""pass@k (spec entropy-methods.md section 7): the unbiased estimator of Chen et al. 2021."""

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import workbench
from workbench.exploration import k_values, mean_pass_at_k, pass_at_k, pass_at_k_curve


def exact(n, c, k) -> Fraction:
    """1 - C(n - c, k) / C(n, k) in exact rationals (math.comb(m, k) is 0 when m < k)."""
    return 1 - Fraction(math.comb(n - c, k), math.comb(n, k))


def test_spec_examples():
    assert workbench.pass_at_k is pass_at_k
    assert pass_at_k(8, 1, 1) == pytest.approx(0.125, abs=1e-12)
    assert pass_at_k(8, 1, 4) == pytest.approx(0.5, abs=1e-12)
    assert pass_at_k(8, 2, 4) == pytest.approx(0.785714, abs=1e-6)
    assert pass_at_k(16, 4, 8) == pytest.approx(0.961538, abs=1e-6)


def test_edge_cases():
    assert pass_at_k(8, 0, 8) == 0.0  # nothing correct
    assert pass_at_k(8, 8, 1) == 1.0  # all correct
    assert pass_at_k(8, 5, 4) == 1.0  # n - c < k: every k-subset holds a correct sample
    assert pass_at_k(1, 1, 1) == 1.0 and pass_at_k(1, 0, 1) == 0.0
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3, abs=1e-12)  # pass@1 is the fraction correct
    assert isinstance(pass_at_k(np.int64(8), np.int64(2), 4), float)


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 200).flatmap(lambda n: st.tuples(st.just(n), st.integers(0, n), st.integers(1, n))))
def test_matches_the_exact_binomial_formula(nck):
    n, c, k = nck
    assert pass_at_k(n, c, k) == pytest.approx(float(exact(n, c, k)), abs=1e-12)


def test_stable_where_the_binomials_overflow_floats():
    # C(2000, 1000) ~ 2e600 is beyond float64: the product form still gives the right number
    assert pass_at_k(2000, 3, 1000) == pytest.approx(float(exact(2000, 3, 1000)), abs=1e-12)
    assert pass_at_k(5000, 1, 10) == pytest.approx(10 / 5000, abs=1e-15)


def test_errors():
    with pytest.raises(ValueError, match=r"c \(correct samples\) must be in \[0, n\]"):
        pass_at_k(8, 9, 1)
    with pytest.raises(ValueError, match=r"k must be in \[1, n\] = \[1, 8\]"):
        pass_at_k(8, 2, 9)
    with pytest.raises(ValueError, match="k must be in"):
        pass_at_k(8, 2, 0)
    with pytest.raises(ValueError, match="n .* must be >= 1"):
        pass_at_k(0, 0, 1)
    with pytest.raises(TypeError, match="k must be an int"):
        pass_at_k(8, 2, 2.0)
    with pytest.raises(TypeError, match="c must be an int"):
        pass_at_k(8, True, 2)
    with pytest.raises(ValueError, match="n has 2 entries but c has 3"):
        mean_pass_at_k([8, 8], [1, 2, 3], 2)
    with pytest.raises(ValueError, match="c is empty"):
        mean_pass_at_k(8, [], 2)


def test_k_values_and_the_mean_over_problems():
    assert k_values(1) == [1]
    assert k_values(8) == [1, 2, 4, 8]
    assert k_values(12) == [1, 2, 4, 8]
    assert k_values(16) == [1, 2, 4, 8, 16]
    assert mean_pass_at_k(8, [1, 2], 4) == pytest.approx((0.5 + 0.785714) / 2, abs=1e-6)
    assert mean_pass_at_k([8, 16], [1, 4], 4) == pytest.approx((0.5 + float(exact(16, 4, 4))) / 2, abs=1e-12)
    curve = pass_at_k_curve(8, [1, 2, 0])
    assert list(curve) == [1, 2, 4, 8]
    assert curve[1] == pytest.approx(3 / 24) and curve[4] == pytest.approx((0.5 + 0.785714 + 0) / 3, abs=1e-6)
    assert curve[8] == pytest.approx(2 / 3)
    assert list(pass_at_k_curve([8, 16], [1, 4])) == [1, 2, 4, 8]  # up to the smallest n
    assert all(a <= b for a, b in zip(list(curve.values()), list(curve.values())[1:]))  # pass@k grows with k
