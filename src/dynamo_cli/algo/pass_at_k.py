"""Evaluation metrics."""
from __future__ import annotations

from collections.abc import Sequence
from numbers import Integral


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct (Chen et al. 2021, arXiv 2107.03374).

        pass@k = 1 - C(n - c, k) / C(n, k) = 1 - prod_{i = n-c+1}^{n} (1 - k / i)

    The product form avoids the huge binomials. 1.0 when n - c < k (every k-subset holds a correct sample).
    """
    if not 0 <= c <= n:
        raise ValueError(f"need 0 <= c <= n, got c={c}, n={n}")
    if not 1 <= k <= n:
        raise ValueError(f"need 1 <= k <= n, got k={k}, n={n}")
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def mean_pass_at_k(n: int | Sequence[int], c: Sequence[int], k: int) -> float:
    """Mean pass@k over problems; n is one sample count for all problems or one per problem."""
    c = [int(x) for x in c]
    ns = [int(n)] * len(c) if isinstance(n, Integral) else [int(x) for x in n]
    if len(ns) != len(c) or not c:
        raise ValueError(f"need one n per problem and at least one problem, got {len(ns)} n and {len(c)} c")
    return sum(pass_at_k(ni, ci, k) for ni, ci in zip(ns, c, strict=True)) / len(c)
