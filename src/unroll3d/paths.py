"""The results layout, written once: the Snakemake rules and the report both build paths here.

Every function takes the results root (``results`` in the workflow) and returns a ``str`` path
(Snakemake wants strings; wildcards such as ``{task}`` pass through unchanged, so the same
function gives a rule's output pattern and a concrete file). Nothing here touches the disk or
imports anything heavy.

Layout::

    {root}/data/{task}/{volume}.pt                           preprocessed sample
    {root}/normal/{task}/{setting}.pt|.csv                   fitted H and its fitting curve
    {root}/normal/{task}/{setting}/{volume}.pt|.csv          H of one test volume (per sample)
    {root}/models/{task}/{setting}/{variant}.pt|.csv|.json   model, per-step CSV, train stats
                                                             ({setting} = all: one model for all)
    {root}/models/{task}/{setting}/sweep/p{patch}.pt|...     Figs. 7/8 patch-size sweep
    {root}/eval/{task}/{setting}/{variant}/{volume}.json|.npz
    {root}/eval/{task}/{setting}/sweep/p{patch}/{volume}.json
    {root}/tables/  {root}/figures/  {root}/figures/data/  {root}/benchmarks/  {root}/logs/
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "sample",
    "normal_fit",
    "normal_history",
    "normal_fit_sample",
    "normal_history_sample",
    "model_base",
    "sweep_model_base",
    "eval_base",
    "eval_json",
    "sweep_eval_dir",
    "sweep_eval_json",
    "tables_dir",
    "figures_dir",
    "illustrations_dir",
    "illustration",
    "benchmarks_dir",
    "logs_dir",
    "patch_label",
    "parse_patch_label",
]


def sample(root: str, task: str, volume: str) -> str:
    """Preprocessed file of one volume (input of fit-normal, train, evaluate)."""
    return f"{root}/data/{task}/{volume}.pt"


def normal_fit(root: str, task: str, setting: str) -> str:
    return f"{root}/normal/{task}/{setting}.pt"


def normal_history(root: str, task: str, setting: str) -> str:
    return f"{root}/normal/{task}/{setting}.csv"


def normal_fit_sample(root: str, task: str, setting: str, volume: str) -> str:
    """H fitted to one volume's own operator (``normal.per_sample``)."""
    return f"{root}/normal/{task}/{setting}/{volume}.pt"


def normal_history_sample(root: str, task: str, setting: str, volume: str) -> str:
    return f"{root}/normal/{task}/{setting}/{volume}.csv"


def model_base(root: str, task: str, setting: str, variant: str) -> str:
    """A trained model without its suffix: ``.pt`` model, ``.csv`` steps, ``.json`` stats."""
    return f"{root}/models/{task}/{setting}/{variant}"


def sweep_model_base(root: str, task: str, setting: str, patch: str) -> str:
    return f"{root}/models/{task}/{setting}/sweep/p{patch}"


def eval_base(root: str, task: str, setting: str, variant: str, volume: str) -> str:
    """An evaluation without its suffix: ``.json`` metrics, ``.npz`` slices."""
    return f"{root}/eval/{task}/{setting}/{variant}/{volume}"


def eval_json(root: str, task: str, setting: str, variant: str, volume: str) -> str:
    return eval_base(root, task, setting, variant, volume) + ".json"


def sweep_eval_dir(root: str, task: str, setting: str, patch: str) -> str:
    return f"{root}/eval/{task}/{setting}/sweep/p{patch}"


def sweep_eval_json(root: str, task: str, setting: str, patch: str, volume: str) -> str:
    return f"{sweep_eval_dir(root, task, setting, patch)}/{volume}.json"


def tables_dir(root: str) -> str:
    return f"{root}/tables"


def figures_dir(root: str) -> str:
    return f"{root}/figures"


def illustrations_dir(root: str) -> str:
    """Small .npz panels of Figs. 9/10 (computed by a rule, plotted by the report)."""
    return f"{figures_dir(root)}/data"


def illustration(root: str, task: str, setting: str) -> str:
    return f"{illustrations_dir(root)}/normal_{task}_{setting}.npz"


def benchmarks_dir(root: str) -> str:
    return f"{root}/benchmarks"


def logs_dir(root: str) -> str:
    return f"{root}/logs"


def patch_label(patch: Sequence[int]) -> str:
    """[8, 16, 16] -> "8x16x16" (the ``{patch}`` wildcard)."""
    return "x".join(str(int(p)) for p in patch)


def parse_patch_label(label: str) -> list[int]:
    """"8x16x16" -> [8, 16, 16]."""
    try:
        return [int(p) for p in label.split("x")]
    except ValueError:
        raise ValueError(f"patch label {label!r} is not of the form DxHxW") from None
