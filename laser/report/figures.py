"""`laser compare` figures: mean VAQ per layer (relative depth), the chosen layer l*, decode paths.

Each function takes the loaded runs and a PNG path, draws with the Agg backend and returns whether it
had anything to draw (a figure without data is not written).
"""

from __future__ import annotations

import textwrap
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from .runs import Run, vanilla_for  # noqa: E402
from .tables import path_counts  # noqa: E402

DPI = 100
PATH_COLOURS = {"vanilla": "#8c8c8c", "direct": "#1f77b4", "contrastive": "#ff7f0e", "error": "#d62728"}
STYLE = {
    "font.size": 10,
    "axes.titlesize": 11,
    "axes.labelsize": 10,
    "legend.fontsize": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
}


def _selects_layer(run: Run) -> bool:
    vaq = (run.config.get("method") or {}).get("vaq") or {}
    return vaq.get("select", "vaq") == "vaq" and run.num_layers is not None


def layer_run(runs: Sequence[Run]) -> Run | None:
    """The run whose VAQ / l* stands for a (model, dataset) cell: `laser` if present, else a run
    selecting l* by VAQ on the contrastive map, else any run with VAQ vectors."""
    with_vaq = [r for r in runs if r.num_layers is not None]

    def contrastive(run: Run) -> bool:
        return ((run.config.get("method") or {}).get("vaq") or {}).get("map", "contrastive") == "contrastive"

    for keep in (
        lambda r: r.method == "laser",
        lambda r: _selects_layer(r) and contrastive(r),
        _selects_layer,
    ):
        chosen = [r for r in with_vaq if keep(r)]
        if chosen:
            return chosen[0]
    return with_vaq[0] if with_vaq else None


def _cells(runs: Sequence[Run]) -> dict[str, dict[str, Run]]:
    """model -> dataset -> the run standing for that cell (see `layer_run`)."""
    grouped: dict[str, dict[str, list[Run]]] = defaultdict(lambda: defaultdict(list))
    for run in runs:
        grouped[run.model][run.dataset].append(run)
    cells: dict[str, dict[str, Run]] = {}
    for model in sorted(grouped):
        for dataset in sorted(grouped[model]):
            chosen = layer_run(grouped[model][dataset])
            if chosen is not None:
                cells.setdefault(model, {})[dataset] = chosen
    return cells


def _vaq_matrix(run: Run) -> np.ndarray:
    depth = run.num_layers
    rows = [r["vaq"] for r in run.records if r.get("vaq") and len(r["vaq"]) == depth]
    return np.asarray(rows, dtype=np.float64)


def _panel_grid(count: int, max_cols: int, width: float, height: float):
    cols = min(count, max_cols)
    rows = -(-count // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    for ax in axes.flat[count:]:
        ax.set_visible(False)
    return fig, list(axes.flat)


def _fitted_suptitle(fig, text: str, fontsize: float = 12) -> None:
    """A figure title wrapped to the figure's width (a one-panel figure is narrower than a long title);
    the figure grows by the extra lines, so the panels keep their size under `tight_layout`."""
    chars_per_line = max(20, int(fig.get_figwidth() * 72 / (0.6 * fontsize)))
    wrapped = textwrap.fill(text, chars_per_line)
    fig.suptitle(wrapped, fontsize=fontsize)
    fig.set_figheight(fig.get_figheight() + wrapped.count("\n") * 1.3 * fontsize / 72)


def _save(fig, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def vaq_figure(runs: Sequence[Run], path: Path) -> bool:
    """Mean VAQ[l] per layer: one panel per model, a line per dataset (the paper's figure 4).

    x is the relative depth l/(L-1), so models of different depth share an axis; the band is the 95%
    normal interval of the mean; a dot marks the layer with the highest mean VAQ."""
    cells = _cells(runs)
    if not cells:
        return False
    names = sorted({d for per_model in cells.values() for d in per_model})
    colours = {d: plt.cm.tab10.colors[i % 10] for i, d in enumerate(names)}  # a dataset keeps its colour
    with plt.rc_context(STYLE):
        fig, axes = _panel_grid(len(cells), 3, 5.4, 3.6 + 0.25 * len(names))
        for ax, (model, datasets) in zip(axes, cells.items()):
            depth = 0
            for dataset, run in datasets.items():
                colour = colours[dataset]
                values = _vaq_matrix(run)
                depth = values.shape[1]
                x = np.arange(depth) / max(depth - 1, 1)
                mean = values.mean(axis=0)
                sem = values.std(axis=0, ddof=1) / np.sqrt(len(values)) if len(values) > 1 else 0 * mean
                suffix = "" if run.method == "laser" else f", {run.label}"
                ax.plot(x, mean, color=colour, lw=1.8, label=f"{dataset} (n={len(values)}{suffix})")
                ax.fill_between(x, mean - 1.96 * sem, mean + 1.96 * sem, color=colour, alpha=0.18, lw=0)
                top = int(np.argmax(mean))
                ax.plot(x[top], mean[top], "o", color=colour, ms=6, mec="black", mew=0.6)
            ax.set_title(f"{model}\n{depth} decoder layers (top axis: layer index)", pad=8)
            ax.set_xlabel("relative depth  l / (L-1)")
            ax.set_ylabel("mean VAQ[l]")
            ax.set_xlim(0, 1)
            ax.grid(alpha=0.3)
            ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), frameon=False)
            if depth > 1:
                top_axis = ax.secondary_xaxis(
                    "top", functions=(lambda v, d=depth: v * (d - 1), lambda v, d=depth: v / (d - 1))
                )
                top_axis.xaxis.set_major_locator(MaxNLocator(integer=True))  # layer indices are whole
                top_axis.tick_params(labelsize=8)
        _fitted_suptitle(
            fig, "Mean VAQ (visual activation by query) per layer (band: 95% interval of the mean; dot: highest mean)"
        )
        fig.tight_layout()
        _save(fig, path)
    return True


def layer_figure(runs: Sequence[Run], path: Path) -> bool:
    """Histogram of the chosen layer l*: a row of panels per model, a panel per dataset (the paper's
    figure 5). The shaded part is where the `auto` gate decodes contrastively (l*/L >= gate.depth)."""
    cells = {
        model: {d: r for d, r in datasets.items() if _selects_layer(r)}
        for model, datasets in _cells(runs).items()
    }
    cells = {m: d for m, d in cells.items() if d}
    if not cells:
        return False
    datasets = sorted({d for per_model in cells.values() for d in per_model})
    with plt.rc_context(STYLE):
        fig, grid = plt.subplots(
            len(cells),
            len(datasets),
            figsize=(max(6.4, 4.8 * len(datasets)), 1.3 + 3.2 * len(cells)),
            squeeze=False,
            sharey=True,
        )
        gate_label = None
        for row, (model, per_model) in enumerate(cells.items()):
            for col, dataset in enumerate(datasets):
                ax = grid[row][col]
                run = per_model.get(dataset)
                if run is None:
                    ax.axis("off")
                    ax.text(0.5, 0.5, f"{model}\n{dataset}\n(no run)", ha="center", va="center", color="grey")
                    continue
                depth = run.num_layers or 1
                layers = [int(r["layer"]) for r in run.records if r.get("layer") is not None]
                counts = np.bincount(layers, minlength=depth)[:depth] if layers else np.zeros(depth)
                share = counts / max(len(layers), 1)
                ax.bar(np.arange(depth), share, width=0.85, color="#4c72b0")
                gate = run.gate_depth
                if gate is not None:
                    gate_label = f"auto gate: contrastive decoding where l*/L ≥ {gate:g}"
                    ax.axvspan(gate * depth - 0.5, depth - 0.5, color=PATH_COLOURS["contrastive"], alpha=0.12)
                ax.set_xlim(-0.6, depth - 0.4)
                ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # layer indices are whole
                ax.set_title(f"{model} · {dataset}\n{run.label}, n={len(layers)}", fontsize=10)
                ax.set_xlabel(f"chosen layer l*  (0 … {depth - 1})")
                ax.set_ylabel("share of samples")
                ax.tick_params(labelleft=True)
                ax.grid(axis="y", alpha=0.3)
        handles = [Patch(color="#4c72b0", label="share of samples with this l*")]
        if gate_label:
            handles.append(Patch(color=PATH_COLOURS["contrastive"], alpha=0.25, label=gate_label))
        fig.suptitle("Which layer VAQ selects (l*)", fontsize=12)
        fig.legend(
            handles=handles,
            loc="upper center",
            ncol=2 if len(datasets) > 1 else 1,  # one column of panels: the entries one under the other
            frameon=False,
            bbox_to_anchor=(0.5, 1 - 0.4 / fig.get_figheight()),
        )
        fig.tight_layout(rect=(0, 0, 1, 1 - (0.7 if len(datasets) > 1 else 1.0) / fig.get_figheight()))
        _save(fig, path)
    return True


def _path_accuracy(run: Run) -> dict[str, tuple[float, int]]:
    values = run.values()
    grouped: dict[str, list[float]] = defaultdict(list)
    for record in run.records:
        value = values.get(str(record["sample_id"]))
        if value is not None:
            grouped[str(record.get("path") or "error")].append(value)
    return {p: (float(np.mean(v)), len(v)) for p, v in grouped.items()}


def _group_lines(axes, ordered: Sequence[Run]) -> None:
    """Thin lines between the (model, dataset) groups of a per-run bar chart."""
    for k in range(1, len(ordered)):
        if (ordered[k].model, ordered[k].dataset) != (ordered[k - 1].model, ordered[k - 1].dataset):
            for ax in axes:
                ax.axhline(k - 0.5, color="black", lw=0.6, alpha=0.5)


def path_figure(runs: Sequence[Run], path: Path) -> bool:
    """Left: share of samples per decode path, per run. Right: accuracy on each path's samples
    (a bar per path the run took, with its sample count), the run's overall accuracy (black line) and
    that of the vanilla run of the same model and dataset (grey dashed line). Vanilla runs get no row
    of their own unless there is nothing else."""
    if not runs:
        return False
    shown = [r for r in runs if not r.is_vanilla] or list(runs)
    ordered = sorted(shown, key=lambda r: (r.dataset, r.model, not r.is_vanilla, r.label))[::-1]
    names = [f"{r.label}\n{r.model} · {r.dataset}" for r in ordered]
    paths = [p for p in PATH_COLOURS if any(p in path_counts(r) for r in ordered)]
    y = np.arange(len(ordered))
    with plt.rc_context(STYLE):
        fig, (left, right) = plt.subplots(
            1, 2, figsize=(13, 1.9 + 0.62 * len(ordered)), sharey=True, gridspec_kw={"width_ratios": [1, 1.2]}
        )
        start = np.zeros(len(ordered))
        for p in paths:
            counts = np.array([path_counts(r).get(p, 0) for r in ordered], dtype=float)
            share = counts / np.array([max(len(r.records), 1) for r in ordered])
            left.barh(y, share, left=start, color=PATH_COLOURS[p], label=p, height=0.6)
            for yi, s0, s in zip(y, start, share):
                if s >= 0.08:
                    left.text(
                        s0 + s / 2, yi, f"{100 * s:.0f}%", ha="center", va="center", fontsize=8, color="white"
                    )
            start += share
        left.set_xlim(0, 1)
        left.set_xlabel("share of samples")
        left.set_yticks(y, names)
        left.set_ylim(-0.6, len(ordered) - 0.4)
        left.set_title("Decode path taken")
        for yi, run in zip(y, ordered):
            references = []
            overall = run.score(n_boot=1)["accuracy"]
            if overall is not None:
                right.plot([overall, overall], [yi - 0.42, yi + 0.42], color="black", lw=1.6, zorder=3)
                references.append(overall)
            baseline = None if run.is_vanilla else vanilla_for(run, runs)
            if baseline is not None and baseline.score(n_boot=1)["accuracy"] is not None:
                base = baseline.score(n_boot=1)["accuracy"]
                right.plot([base, base], [yi - 0.42, yi + 0.42], color="#555555", lw=1.4, ls="--", zorder=3)
                references.append(base)
            accuracy = _path_accuracy(run)
            present = [p for p in paths if p in accuracy]
            height = 0.7 / max(len(present), 1)
            for k, p in enumerate(present):
                offset = ((len(present) - 1) / 2 - k) * height
                value, count = accuracy[p]
                right.barh(yi + offset, value, height=height * 0.9, color=PATH_COLOURS[p])
                right.text(
                    max([value, *references]) + 0.015, yi + offset, f"{100 * value:.0f}% (n={count})",
                    va="center", fontsize=8,
                )  # fmt: skip
        right.plot([], [], color="black", lw=1.6, label="overall accuracy of the run")
        if any(not r.is_vanilla and vanilla_for(r, runs) is not None for r in ordered):
            right.plot(
                [], [], color="#555555", lw=1.4, ls="--", label="vanilla accuracy, same model and dataset"
            )
        right.set_xlim(0, 1.2)
        right.set_xticks(np.linspace(0, 1, 6))
        right.set_xlabel("accuracy on the samples of each path")
        right.set_title("Accuracy by decode path")
        _group_lines((left, right), ordered)
        for ax in (left, right):
            ax.grid(axis="x", alpha=0.3)
        handles = left.get_legend_handles_labels()[0] + right.get_legend_handles_labels()[0]
        labels = left.get_legend_handles_labels()[1] + right.get_legend_handles_labels()[1]
        fig.suptitle("Decode paths per run", fontsize=12)
        fig.legend(
            handles,
            labels,
            loc="upper center",
            ncol=min(len(labels), 5),
            frameon=False,
            bbox_to_anchor=(0.5, 1 - 0.45 / fig.get_figheight()),
        )
        fig.tight_layout(rect=(0, 0, 1, 1 - 0.75 / fig.get_figheight()))
        _save(fig, path)
    return True
