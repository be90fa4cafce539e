import math

import pytest

from dynamo_cli.algo.pass_at_k import mean_pass_at_k, pass_at_k


def test_pass_at_k_hand_values():
    # n=5, c=2, k=2: 1 - C(3,2)/C(5,2) = 1 - 3/10 = .7
    assert pass_at_k(5, 2, 2) == pytest.approx(0.7)
    # n=3, c=1, k=2: 1 - C(2,2)/C(3,2) = 1 - 1/3
    assert pass_at_k(3, 1, 2) == pytest.approx(2 / 3)
    # k=1 is the plain success rate: 3/10
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
    # no correct sample -> 0; n - c < k (4 - 2 < 3): every 3-subset holds a correct one -> 1
    assert pass_at_k(5, 0, 2) == 0.0
    assert pass_at_k(4, 2, 3) == 1.0


def test_pass_at_k_large_n_matches_binomials():
    # product form agrees with exact binomials where those would overflow a float
    n, c, k = 1000, 10, 100
    assert pass_at_k(n, c, k) == pytest.approx(1 - math.comb(n - c, k) / math.comb(n, k), rel=1e-12)


def test_pass_at_k_validation():
    with pytest.raises(ValueError, match="k"):
        pass_at_k(4, 1, 5)
    with pytest.raises(ValueError, match="c"):
        pass_at_k(4, 5, 1)


def test_mean_pass_at_k():
    # (.7 + 0 + 1) / 3 with n = 5 for every problem
    assert mean_pass_at_k(5, [2, 0, 5], 2) == pytest.approx(1.7 / 3)
    # one n per problem: (pass@2(5,2) = .7 + pass@2(3,1) = 2/3) / 2
    assert mean_pass_at_k([5, 3], [2, 1], 2) == pytest.approx((0.7 + 2 / 3) / 2)
    with pytest.raises(ValueError):
        mean_pass_at_k([5, 3], [2], 2)
