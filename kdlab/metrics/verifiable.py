"""Pass@k of responses checked by a verifiable reward (Chen et al. 2021, "Evaluating Large Language
Models Trained on Code", arXiv 2107.03374): the probability that at least one of k responses is right."""

from collections.abc import Sequence


def pass_at_k(n: int, c: int, k: int) -> float:
    """The unbiased estimator `1 − C(n−c, k) / C(n, k)` from n responses of which c are right (k ≤ n),
    computed as `1 − Π_{i=n−c+1}^{n} (1 − k/i)` (no large binomials)."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    product = 1.0
    for i in range(n - c + 1, n + 1):
        product *= 1.0 - k / i
    return 1.0 - product


def pass_ks(n: int) -> list[int]:
    """The k reported for n responses per prompt: 1, 2, 4, ... below n, and n."""
    ks, k = [], 1
    while k < n:
        ks.append(k)
        k *= 2
    return [*ks, n]


def mean_pass_at_k(correct: Sequence[int], n: int) -> dict[str, float]:
    """`{"pass@k": mean over prompts}` for every k of `pass_ks(n)`, from each prompt's count of right responses."""
    return {f"pass@{k}": sum(pass_at_k(n, c, k) for c in correct) / len(correct) for k in pass_ks(n)}
