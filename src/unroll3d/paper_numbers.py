"""The numbers the paper reports (``docs/paper-notes.md`` §6), as data, each with its source label.

Every reference value shown next to ours in the tables and figures comes from here, never typed
into a table by hand. All of them carry the **[summary]** label of ``docs/paper-notes.md`` (third-party
summaries of Vo & Tachella, CVPR 2026; not checked against the PDF).

One record per reported cell:

- ``task``: ``cbct`` or ``mri``;
- ``variant``: the project's variant name (``docs/paper-notes.md`` §4.7): the paper's "ours" is
  ``partition-H`` on CBCT and ``partition`` on MRI;
- ``setting``: ``v30``/``v50``/``v100``/``R5``/``R10`` for per-setting values, ``mean`` for the
  ablation's average over settings, ``all`` for setting-independent training costs;
- ``metric``: ``psnr`` (dB), ``ssim``, ``train_mem_gb`` (peak training VRAM, GB), ``train_step_s``
  (seconds per micro-step; ``accumulate`` gives the gradient-accumulation factor shown as "×4"),
  ``data_step_it_s`` (data-step iterations per second);
- ``value``: a float, or ``None`` where the paper marks the cell ✗ / OOM (then ``status`` is
  ``"oom"``) or N/A (``status`` ``"na"``);
- ``source``: ``table1``, ``table2``, ``ablation`` or ``text`` (§6.4); ``label``: ``summary``.

:Example:

>>> from unroll3d.paper_numbers import paper_value
>>> paper_value("cbct", "partition-H", "psnr", "v30").value
31.17
>>> paper_value("cbct", "unrolled", "psnr", "v30").status
'oom'
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "PaperNumber",
    "PAPER_NUMBERS",
    "PAPER_ONLY_ROWS",
    "PAPER_MISSING_NOTE",
    "paper_value",
    "paper_numbers",
]


@dataclass(frozen=True)
class PaperNumber:
    """One reported cell of the paper."""

    task: str
    variant: str
    setting: str
    metric: str
    value: float | None
    source: str
    status: str = "ok"  # ok | oom | na
    accumulate: int = 1
    label: str = "summary"

    def display(self, digits: int = 2) -> str:
        """The cell as the paper prints it (``✗``/``OOM``/``N/A`` or the number, ``×4`` suffix)."""
        if self.status == "oom":
            return "OOM" if self.metric == "train_mem_gb" else "✗"
        if self.status == "na" or self.value is None:
            return "N/A"
        text = f"{self.value:.{digits}f}"
        if self.accumulate > 1:
            text += f"×{self.accumulate}"
        return text


def _rows() -> list[PaperNumber]:
    rows: list[PaperNumber] = []

    def per_setting(task, variant, metric, settings, values, source):
        for s, v in zip(settings, values, strict=True):
            status = "oom" if v == "oom" else "ok"
            rows.append(
                PaperNumber(task, variant, s, metric, None if status != "ok" else v, source, status)
            )

    def cost(task, variant, mem, step, source, accumulate=1, setting="all"):
        for metric, v in (("train_mem_gb", mem), ("train_step_s", step)):
            status = {"oom": "oom", "na": "na"}.get(v, "ok") if isinstance(v, str) else "ok"
            rows.append(
                PaperNumber(
                    task,
                    variant,
                    setting,
                    metric,
                    None if status != "ok" else v,
                    source,
                    status,
                    accumulate if metric == "train_step_s" else 1,
                )
            )

    # §6.1 Table 1: sparse-view Walnut-CBCT (501³; 30 / 50 / 100 of 1200 views)
    cv = ["v30", "v50", "v100"]
    t1 = "table1"
    per_setting("cbct", "fdk", "ssim", cv, [0.197, 0.263, 0.375], t1)
    per_setting("cbct", "fdk", "psnr", cv, [18.53, 21.16, 24.74], t1)
    cost("cbct", "fdk", "na", "na", t1)
    per_setting("cbct", "tv", "ssim", cv, [0.799, 0.850, 0.893], t1)
    per_setting("cbct", "tv", "psnr", cv, [27.88, 29.72, 31.63], t1)
    cost("cbct", "tv", "na", "na", t1)
    per_setting("cbct", "inr", "ssim", cv, [0.805, 0.862, 0.913], t1)
    per_setting("cbct", "inr", "psnr", cv, [29.97, 32.18, 33.74], t1)
    cost("cbct", "inr", "na", "na", t1)
    per_setting("cbct", "pnp", "ssim", cv, [0.803, 0.868, 0.884], t1)
    per_setting("cbct", "pnp", "psnr", cv, [28.63, 31.69, 33.72], t1)
    cost("cbct", "pnp", 67.50, 1.39, t1)
    per_setting("cbct", "postproc", "ssim", cv, [0.857, 0.905, 0.931], t1)
    per_setting("cbct", "postproc", "psnr", cv, [29.47, 32.49, 35.22], t1)
    cost("cbct", "postproc", 67.50, 1.39, t1)
    per_setting("cbct", "unrolled", "ssim", cv, ["oom"] * 3, t1)
    per_setting("cbct", "unrolled", "psnr", cv, ["oom"] * 3, t1)
    cost("cbct", "unrolled", "oom", "oom", t1)
    per_setting("cbct", "partition-H", "ssim", cv, [0.877, 0.926, 0.947], t1)
    per_setting("cbct", "partition-H", "psnr", cv, [31.17, 34.21, 37.07], t1)
    cost("cbct", "partition-H", 44.70, 1.20, t1, accumulate=4)

    # §6.2 Table 2: Calgary-Campinas MC-MRI (R = 5 / 10)
    mv = ["R5", "R10"]
    t2 = "table2"
    per_setting("mri", "postproc", "ssim", mv, [0.930, 0.900], t2)
    per_setting("mri", "postproc", "psnr", mv, [35.02, 32.67], t2)
    cost("mri", "postproc", 17.85, 0.610, t2)
    per_setting("mri", "unrolled", "ssim", mv, [0.952, 0.926], t2)
    per_setting("mri", "unrolled", "psnr", mv, [37.74, 34.72], t2)
    cost("mri", "unrolled", 75.93, 2.16, t2)
    per_setting("mri", "partition", "ssim", mv, [0.948, 0.919], t2)
    per_setting("mri", "partition", "psnr", mv, [37.36, 34.25], t2)
    cost("mri", "partition", 37.02, 1.10, t2)

    # §6.3 Ablation: average PSNR over the settings, peak VRAM, s/step
    ab = "ablation"
    for task, variant, psnr, mem, step, acc in [
        ("mri", "unrolled", 36.23, 75.93, 2.16, 1),
        ("mri", "unrolled-H", 35.12, 74.48, 2.15, 1),
        ("mri", "partition", 35.85, 37.02, 1.10, 1),
        ("mri", "partition-H", 35.09, 37.04, 1.09, 1),
        ("cbct", "unrolled", "oom", "oom", "oom", 1),
        ("cbct", "unrolled-H", "oom", "oom", "oom", 1),
        ("cbct", "partition", 34.11, 44.70, 1.65, 4),
        ("cbct", "partition-H", 34.15, 44.70, 1.21, 4),
    ]:
        per_setting(task, variant, "psnr", ["mean"], [psnr], ab)
        cost(task, variant, mem, step, ab, accumulate=acc, setting="mean")

    # §6.4 data-step speed on Walnut-CBCT (conditions not stated)
    rows.append(PaperNumber("cbct", "partition", "all", "data_step_it_s", 4.19, "text"))
    rows.append(PaperNumber("cbct", "partition-H", "all", "data_step_it_s", 12.5, "text"))
    return rows


PAPER_NUMBERS: tuple[PaperNumber, ...] = tuple(_rows())

#: Rows of the paper's tables that this project does not reimplement (named in the footnotes).
PAPER_ONLY_ROWS: dict[str, list[str]] = {
    "cbct": [],
    "mri": [],
}

#: Per task, a note on rows the paper has but whose numbers are not available to us.
PAPER_MISSING_NOTE: dict[str, str] = {
    "mri": "the paper's zero-filled RSS, TV, DRUNet[2D], PnP-αPGD and INR rows exist but their "
    "numbers are not available to us (docs/paper-notes.md §6.2)",
}

_SOURCE_PREFERENCE = {"table1": 0, "table2": 0, "ablation": 1, "text": 2}


def paper_numbers() -> list[PaperNumber]:
    """All reported cells, as a new list."""
    return list(PAPER_NUMBERS)


def paper_value(
    task: str, variant: str, metric: str, setting: str = "all", source: str | None = None
) -> PaperNumber | None:
    """The paper's value for one cell, or ``None`` when the paper does not report it.

    Training costs (``train_mem_gb``, ``train_step_s``) are setting-independent: asking for any
    setting finds the ``all`` record of a main table first, then the ablation's ``mean`` record.

    :param str source: restrict to one source (``table1``, ``table2``, ``ablation``, ``text``).
    """
    wanted = {setting}
    if metric in ("train_mem_gb", "train_step_s", "data_step_it_s"):
        wanted |= {"all", "mean"}
    hits = [
        p
        for p in PAPER_NUMBERS
        if p.task == task
        and p.variant == variant
        and p.metric == metric
        and p.setting in wanted
        and (source is None or p.source == source)
    ]
    if not hits:
        return None
    hits.sort(key=lambda p: (p.setting != setting, _SOURCE_PREFERENCE.get(p.source, 9)))
    return hits[0]
