"""Figures of a report, drawn so that a reader can read them.

Rules every figure follows:

- at most ``MAX_SERIES`` (8) series in one axes box: solvers are split by family (first-order,
  multistep, several calls per step, adaptive, SDE with fresh noise, SDE on a Brownian path) into
  small multiples with shared axes, a family larger than 8 over several panels;
- each series has its own colour *and* marker (colour-blind-safe tab10 order, 8 markers);
- legends sit inside their panel (inside the saved image), NFE axes have integer ticks at the
  NFE values present, every reference slope is labelled;
- quality metrics are drawn with error bars (+-1 se) where the rows carry one;
- diverged and failed cells are left out, and the title says how many.

``_save`` writes PNG (the reports) and SVG (papers), both byte-reproducible.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from samplerbench.bench.metrics import fit_order, pareto_front

MAX_SERIES = 8
_MARKERS = "osD^vP*X"
FAMILIES = ("first order", "multistep", "several calls per step", "adaptive",
            "SDE, fresh noise", "SDE, Brownian path")


def _solver_class(name: str):
    try:
        from samplerbench.solvers.registry import solver_class

        return solver_class(name)
    except Exception:  # a plugin absent at report time
        return None


def family(solver: str, noise) -> str:
    """The family a solver is drawn with (its capabilities, read from the registry)."""
    cls = _solver_class(solver)
    if isinstance(noise, str):
        return "SDE, Brownian path" if noise == "brownian" else "SDE, fresh noise"
    if cls is None:
        return "multistep"
    if cls.adaptive:
        return "adaptive"
    if (cls.stages or 1) > 1:
        return "several calls per step"
    return "first order" if (cls.order or 1) <= 1 else "multistep"


def panels(df: pd.DataFrame) -> list[tuple[str, list[str]]]:
    """(title, labels) per panel: each family's labels, split into chunks of <= MAX_SERIES."""
    fam: dict[str, list[str]] = {}
    for label, g in df.groupby("label", sort=False):
        r = g.iloc[0]
        fam.setdefault(family(r["solver"], r["noise"]), []).append(label)
    out = []
    for name in FAMILIES:
        labels = sorted(fam.get(name, []))
        chunks = [labels[i:i + MAX_SERIES] for i in range(0, len(labels), MAX_SERIES)]
        for k, chunk in enumerate(chunks):
            out.append((name + (f" ({k + 1}/{len(chunks)})" if len(chunks) > 1 else ""), chunk))
    return out


def _style(i: int) -> dict:
    import matplotlib

    return {"color": matplotlib.colormaps["tab10"](i % 10), "marker": _MARKERS[i % len(_MARKERS)]}


def _save(fig, path: Path) -> None:
    """PNG for the Markdown / HTML report, SVG beside it for papers.  Both are byte-for-byte
    functions of the rows: no creation date, fixed SVG element ids."""
    import matplotlib
    import matplotlib.pyplot as plt

    import io

    from samplerbench.bench.store import atomic_write_bytes

    png, svg = io.BytesIO(), io.BytesIO()
    fig.savefig(png, format="png", dpi=110)
    with matplotlib.rc_context({"svg.hashsalt": "samplerbench"}):
        fig.savefig(svg, format="svg", metadata={"Date": None})
    plt.close(fig)
    atomic_write_bytes(path, png.getvalue())              # a kill never leaves half a figure
    atomic_write_bytes(path.with_suffix(".svg"), svg.getvalue())


def _integer_ticks(ax, values) -> None:
    """Log x axis with ticks at the (integer) values present, at most ~10 of them."""
    from matplotlib.ticker import FixedLocator, NullLocator

    vals = sorted({int(v) for v in values if v and not pd.isna(v)})
    if not vals:
        return
    while len(vals) > 10:
        vals = vals[::2] + ([vals[-1]] if vals[-1] != vals[::2][-1] else [])
    ax.xaxis.set_major_locator(FixedLocator(vals))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticklabels([str(v) for v in vals])


def _plain_log_y(ax) -> None:
    """Log y axis labelled in plain numbers (1, 2, 5, 10, 20, ...) rather than 2 x 10^1."""
    from matplotlib.ticker import FuncFormatter, LogLocator

    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))


def _grid_of(n: int):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(3, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(max(4.3 * cols, 7.0), 3.6 * rows), sharex=True,
                             sharey=True, squeeze=False, layout="constrained")
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n])


def _left_out(df: pd.DataFrame) -> str:
    bad = df["status"].isin(["diverged", "failed"]).sum()
    return f" ({bad} diverged/failed cells left out)" if bad else ""


def plot_metric(df: pd.DataFrame, metric: str, path: Path, title: str, ylabel: str,
                x: str = "nfe", fit: bool = False) -> bool:
    """``metric`` vs ``x`` (counted NFE, or steps) on log-log axes, small multiples by solver
    family, +-1 se error bars where the rows have ``<metric>_se``.  With ``fit`` each legend entry
    carries the fitted order and labelled reference slopes x^-1, x^-2, x^-4 are drawn in every
    panel."""
    import numpy as np

    ok = df[(df["status"] == "ok") & df[metric].notna() & (df[metric] > 0) & df[x].notna()]
    if ok.empty:
        return False
    groups = panels(ok)
    fig, axes = _grid_of(len(groups))
    se = f"{metric}_se"
    y_lo, y_hi = float(ok[metric].min()), float(ok[metric].max())
    for ax, (name, labels) in zip(axes, groups):
        for i, label in enumerate(labels):
            g = ok[ok["label"] == label].sort_values(x)
            st = _style(i)
            tag = label
            if fit and g["steps"].notna().all():         # no step-count order for adaptive
                p = fit_order(g["nfe"], g[metric])
                tag = f"{label} (p≈{p:.2f})" if p is not None else label
            err = g[se] if se in g and g[se].notna().any() else None
            ax.errorbar(g[x], g[metric], yerr=err, ms=4, lw=1.2, capsize=2, label=tag,
                        color=st["color"], marker=st["marker"])
        if fit:
            n0, n1 = float(ok[x].min()), float(ok[x].max())
            y0 = float(np.exp(np.log(ok[metric]).median()))
            xs = np.array([n0, n1])
            for k in (1, 2, 4):
                ax.plot(xs, y0 * (xs / n0) ** -k, color="0.6", ls=":", lw=1)
                ax.annotate(f"slope −{k}", (n0 * (n1 / n0) ** 0.5,
                                            y0 * ((n1 / n0) ** 0.5) ** -k),
                            fontsize=6, color="0.35", clip_on=True)
        ax.set_xscale("log")
        ax.set_yscale("log")
        if y_hi / y_lo < 1e3:
            _plain_log_y(ax)
        ax.set_title(name, fontsize=9)
        ax.grid(True, which="both", alpha=0.25)
        ax.legend(fontsize=6, loc="best", framealpha=0.8)
        _integer_ticks(ax, ok[x])
    if fit:
        axes[0].set_ylim(y_lo / 3, y_hi * 3)
    for ax in axes:
        ax.tick_params(labelsize=7)
    fig.supxlabel("NFE (counted)" if x == "nfe" else x, fontsize=9)
    fig.supylabel(ylabel, fontsize=9)
    fig.suptitle(title + _left_out(df), fontsize=10)
    _save(fig, path)
    return True


def plot_err_vs_nfe(df: pd.DataFrame, path: Path, title: str) -> bool:
    return plot_metric(df, "err_rms", path, title, "RMS error vs reference", fit=True)


def plot_nonconv(df: pd.DataFrame, path: Path, title: str) -> bool:
    return plot_metric(df, "nonconv", path, title, "RMS(x_N − x_2N), same seed", x="steps")


def plot_pareto(df: pd.DataFrame, path: Path, title: str) -> bool:
    """Error vs wall time per sample: every cell as a grey point, the Pareto front (no cell is
    both faster and more accurate) drawn and each of its points labelled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = df[(df["status"] == "ok") & df["err_rms"].notna() & (df["err_rms"] > 0)
            & df["time_per_sample_s"].notna()].reset_index(drop=True)
    if ok.empty:
        return False
    fig, ax = plt.subplots(figsize=(7.5, 5.0), layout="constrained")
    ax.loglog(ok["time_per_sample_s"], ok["err_rms"], ls="none", marker="o", ms=3,
              color="0.75", label="every cell")
    front = pareto_front(list(ok["time_per_sample_s"]), list(ok["err_rms"]))
    f = ok.iloc[front]
    ax.loglog(f["time_per_sample_s"], f["err_rms"], "k-", marker="o", ms=4, lw=1,
              label="Pareto front")
    for _, r in f.iterrows():
        steps = "" if pd.isna(r["steps"]) else f", {int(r['steps'])} steps"
        ax.annotate(f"{r['label']}{steps}", (r["time_per_sample_s"], r["err_rms"]),
                    fontsize=6, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("wall time per sample, s")
    ax.set_ylabel("RMS error vs float64 reference")
    ax.set_title(title + _left_out(df), fontsize=10)
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(fontsize=7, loc="upper right")
    _save(fig, path)
    return True


def plot_headline(entries: dict, path: Path, title: str, ylabel: str) -> bool:
    """The headline figure: one panel per model, metric +- se vs NFE budget for the given series
    (``{model: {label: [(budget, value, se), ...]}}``, at most MAX_SERIES per model), with the
    floor (real data at the same sample count) as a grey band when given under label None."""
    if not entries:
        return False
    fig, axes = _grid_of(len(entries))
    for ax, (model, series) in zip(axes, entries.items()):
        floor = series.get(None)
        budgets = sorted({b for lab, pts in series.items() if lab is not None and pts
                          for b, *_ in pts})
        i = 0
        for label, pts in series.items():
            if label is None or not pts:
                continue
            b, v, s = zip(*sorted(pts))
            st = _style(i)
            i += 1
            ax.errorbar(b, v, yerr=[0 if e is None else e for e in s], ms=4, lw=1.2,
                        capsize=2, label=label, color=st["color"], marker=st["marker"])
        if floor:
            m, sd = floor
            ax.axhspan(max(m - sd, 1e-9), m + sd, color="0.85", zorder=0,
                       label="floor: real data ± sd")
        ax.set_xscale("log")
        ax.set_yscale("log")
        _plain_log_y(ax)
        ax.set_title(model, fontsize=9)
        ax.grid(True, which="both", alpha=0.25)
        ax.legend(fontsize=6, loc="upper right", framealpha=0.85)
        _integer_ticks(ax, budgets)
        ax.tick_params(labelsize=7)
    fig.supxlabel("NFE budget (counted model calls)", fontsize=9)
    fig.supylabel(ylabel, fontsize=9)
    fig.suptitle(title, fontsize=10)
    _save(fig, path)
    return True
