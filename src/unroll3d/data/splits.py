"""The prior work's Walnut train/validation/test split."""

from __future__ import annotations

import random

__all__ = ["prior_work_split"]


def prior_work_split(
    n: int = 42, counts: tuple[int, int, int] = (30, 4, 8), seed: int = 42
) -> dict:
    """The prior work's Walnut split (``create_splits.py`` of romainvo/pnp-learned-proximal-
    trajectory): shuffle ids 1..n with ``random.seed(seed)``, then *pop from the end*: the first
    ``counts[0]`` popped are train, the next ``counts[1]`` validation, the rest test."""
    rng = random.Random(seed)
    ids = list(range(1, n + 1))
    rng.shuffle(ids)
    popped = ids[::-1]
    a, b = counts[0], counts[0] + counts[1]
    return {
        "train": sorted(popped[:a]),
        "val": sorted(popped[a:b]),
        "test": sorted(popped[b : b + counts[2]]),
    }
