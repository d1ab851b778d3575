"""Fig. 2: the domain-partitioning schematic (patch, context, ỹ)."""

from __future__ import annotations

import logging
from pathlib import Path

from unroll3d.report.figures.base import pyplot, save_figure
from unroll3d.report.figures.style import STYLE

log = logging.getLogger("unroll3d.report")


def _box(ax, x0, y0, w, h, d, face, edge, alpha=1.0, z=1):
    """An oblique-projection cuboid (front face at (x0, y0), depth offset d·(0.5, 0.35))."""
    from matplotlib.patches import Polygon

    dx, dy = 0.5 * d, 0.35 * d
    faces = [
        [(x0, y0), (x0 + w, y0), (x0 + w, y0 + h), (x0, y0 + h)],
        [(x0, y0 + h), (x0 + w, y0 + h), (x0 + w + dx, y0 + h + dy), (x0 + dx, y0 + h + dy)],
        [(x0 + w, y0), (x0 + w + dx, y0 + dy), (x0 + w + dx, y0 + h + dy), (x0 + w, y0 + h)],
    ]
    for i, f in enumerate(faces):
        shade = 1.0 - 0.12 * i
        ax.add_patch(
            Polygon(
                f,
                closed=True,
                facecolor=face,
                edgecolor=edge,
                lw=0.8,
                alpha=alpha * shade,
                zorder=z,
            )
        )


def fig_partition_schematic(out_dir: Path) -> list[Path]:
    """Fig. 2 equivalent: a patch x_patch recovered given the context, with the exact reduced
    problem."""
    plt = pyplot()
    with plt.rc_context({**STYLE, "axes.grid": False}):
        fig, ax = plt.subplots(figsize=(6.6, 2.6))
        ax.set_xlim(0, 10)
        ax.set_ylim(0, 4)
        ax.set_aspect("equal")
        ax.axis("off")
        _box(ax, 0.4, 0.5, 2.6, 2.4, 1.4, "#9ecae1", "#3182bd", alpha=0.55)
        _box(ax, 1.2, 1.4, 1.0, 0.45, 0.9, "#fb6a4a", "#a50f15", z=3)
        ax.text(1.7, 0.2, r"volume $x \in \mathbb{R}^n$", ha="center", fontsize=7)
        ax.text(
            0.45,
            3.55,
            r"context $x_{\mathrm{context}} = S_\perp x \in \mathbb{R}^q$",
            color="#08519c",
            fontsize=7,
        )
        ax.annotate(
            r"patch $x_{\mathrm{patch}} = S x \in \mathbb{R}^p$",
            xy=(2.0, 1.45),
            xytext=(2.6, 0.75),
            color="#a50f15",
            fontsize=7,
            arrowprops={"arrowstyle": "->", "color": "#a50f15", "lw": 0.8},
        )
        ax.annotate(
            "",
            xy=(5.2, 1.9),
            xytext=(4.0, 1.9),
            arrowprops={"arrowstyle": "-|>", "color": "k", "lw": 1.0},
        )
        ax.text(4.6, 2.05, "A", ha="center", fontsize=8)
        lines = [
            ("measurements of the whole volume:", r"$y = A x + \varepsilon$"),
            (
                "remove the context's contribution:",
                r"$\tilde{y} = y - A S_\perp^\top S_\perp x_{\mathrm{context}}$",
            ),
            (
                "exact reduced operator on the patch:",
                r"$\tilde{A} = A S^\top,\quad "
                r"\tilde{y} = \tilde{A} x_{\mathrm{patch}} + \varepsilon$",
            ),
            (
                "data step on the patch:",
                r"$S A^\top A S^\top$  or  $S H S^\top$ (kernel cropped to 2p)",
            ),
            (
                "network on the patch only:",
                r"$x_{\mathrm{patch}} \leftarrow R_\phi(\tilde{y}, \tilde{A})$",
            ),
        ]
        for i, (what, eq) in enumerate(lines):
            yy = 3.4 - 0.68 * i
            ax.text(5.4, yy, what, fontsize=6.5, color="#555555", va="bottom")
            ax.text(5.4, yy - 0.05, eq, fontsize=7.5, va="top")
        fig.suptitle(
            "Domain partitioning (Fig. 2 equivalent): an exact smaller inverse problem "
            "for one patch",
            fontsize=8,
        )
        fig.tight_layout()
        return save_figure(fig, out_dir, "fig2_partition_schematic")
