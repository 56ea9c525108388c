"""Reports from a run directory: per-model tables (solvers x steps), fitted orders, plots.

``samplerbench report DIR [--format md,csv,html,latex,parquet]`` writes ``DIR/report/``:
``README.md`` (Markdown tables and the plots), ``rows.csv``, ``report.html``, ``tables.tex``,
``rows.parquet`` (every row, through pandas + pyarrow) and ``err_vs_nfe_<model>.png`` /
``nonconv_<model>.png``.
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path

import pandas as pd

from samplerbench.bench.metrics import fit_order, fit_order_ci, pareto_front
from samplerbench.bench.store import latest_rows, read_rows
from samplerbench.models.errors import UserError

FORMATS = ("md", "csv", "html", "latex", "parquet")


def _solver_defaults(name: str) -> dict | None:
    try:
        from samplerbench.solvers.registry import get_solver

        return get_solver(name).params()
    except Exception:  # a plugin absent at report time: show all params
        return None


def solver_label(name: str, params: dict | None) -> str:
    params = params or {}
    defaults = _solver_defaults(name) or {}
    shown = {k: v for k, v in params.items()
             if k not in ("rtol", "atol") and defaults.get(k, object()) != v}
    if not shown:
        return name
    return name + "(" + ",".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                                 for k, v in sorted(shown.items())) + ")"


def declared_order(name: str) -> float | None:
    try:
        from samplerbench.solvers.registry import solver_class

        cls = solver_class(name)
        return cls.order if cls.kind == "ode" else cls.strong_order
    except Exception:
        return None


def load_frame(run_dir: str | Path) -> pd.DataFrame:
    raw = read_rows(Path(run_dir) / "rows.jsonl")
    rows = latest_rows(raw)
    if not rows:
        raise UserError("report DIR", str(run_dir), hint="no rows.jsonl with results there; "
                        "run `samplerbench run SPEC --out DIR` first")
    df = pd.DataFrame(rows)
    df.attrs["superseded"] = len(raw) - len(rows)      # older rows of cells computed again
    df["label"] = [solver_label(s, p) + (f" [{n}]" if isinstance(n, str) else "")
                   for s, p, n in zip(df["solver"], df["solver_params"], df["noise"])]
    if "guidance" in df and df["guidance"].notna().any():        # a guidance axis
        df["label"] = df["label"] + df["guidance"].map(
            lambda w: "" if w is None or pd.isna(w) else f" w={w:g}")
    if "dtype" in df and df.groupby("model")["dtype"].nunique().max() > 1:   # a dtype axis
        # (not dtype = "native", where each model has one dtype of its own)
        df["label"] = df["label"] + " " + df["dtype"].astype(str)
    df["grid_label"] = [g + (json.dumps(p, sort_keys=True) if p and any(
        k != "rho" or v != 7.0 for k, v in p.items()) else "")
        for g, p in zip(df["grid"], df["grid_params"])]
    return df


def _fmt(v, nfe=None) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "—"
    s = f"{v:.2e}"
    return f"{s} ({int(nfe)})" if nfe is not None and not pd.isna(nfe) else s


def _status_cell(r) -> str:
    return {"diverged": "diverged", "failed": "failed", "skipped": "skipped"}.get(r["status"], "")


def metric_table(df: pd.DataFrame, metric: str, with_nfe: bool = True, cell=None) -> pd.DataFrame:
    """Solvers x steps table of ``metric`` for one (model, grid), NFE in parentheses.
    ``cell(row) -> str`` formats a cell instead (status cells take precedence)."""
    fmt = cell or (lambda r: _fmt(r[metric], r["nfe"] if with_nfe else None))
    fixed = df[df["steps"].notna()]
    out = {}
    for label, g in fixed.groupby("label", sort=False):
        out[label] = {int(r["steps"]): _status_cell(r) or fmt(r)
                      for _, r in g.sort_values("steps").iterrows()}
    table = pd.DataFrame(out).T
    if not table.empty:
        table = table[sorted(table.columns)]
        table.columns = [f"{c} steps" for c in table.columns]
    return table


def _kid_cell(r) -> str:
    kid, std = r["kid"], r.get("kid_std")
    if kid is None or pd.isna(kid):
        return "—"
    if std is None or pd.isna(std):
        return _fmt(kid, r["nfe"])
    return f"{kid:.2e} ± {std:.1e} ({int(r['nfe'])})"


def kid_table(df: pd.DataFrame) -> pd.DataFrame:
    """Solvers x steps table of KID, ``mean ± std over subsets (NFE)``."""
    return metric_table(df, "kid", cell=_kid_cell)


def flat_rows(df: pd.DataFrame) -> pd.DataFrame:
    """The rows as stored (no report columns), nested parameters as JSON text."""
    flat = df.drop(columns=["label", "grid_label"]).copy()
    for c in ("solver_params", "grid_params"):
        flat[c] = flat[c].map(lambda v: json.dumps(v, sort_keys=True))
    return flat


def order_table(df: pd.DataFrame) -> pd.DataFrame:
    recs = []
    for (label, solver), g in df[df["status"] == "ok"].groupby(["label", "solver"], sort=False):
        p, lo, hi = fit_order_ci(g["nfe"], g["err_rms"])
        declared = declared_order(solver)
        params = g["solver_params"].iloc[0] or {}
        if "solver_order" in params:                        # declared order is per instance
            try:
                from samplerbench.solvers.registry import get_solver

                declared = get_solver(solver, **params).order
            except Exception:
                pass
        recs.append({"solver": label, "declared order": declared,
                     "fitted order": None if p is None else round(p, 2),
                     "95% CI": "—" if lo is None else f"[{lo:.2f}, {hi:.2f}]",
                     "NFE range": f"{int(g['nfe'].min())}–{int(g['nfe'].max())}"})
    return pd.DataFrame(recs)


BUDGETS = (5, 10, 20, 50, 100, 200, 500)


def best_per_budget(df: pd.DataFrame, metric: str = "err_rms") -> pd.DataFrame:
    """For each NFE budget, the cells with the lowest ``metric`` among those within it."""
    ok = df[(df["status"] == "ok") & df[metric].notna() & df["nfe"].notna()]
    recs = []
    for b in BUDGETS:
        within = ok[ok["nfe"] <= b].sort_values([metric, "nfe", "label"], kind="stable")
        if within.empty:
            continue
        top = within.drop_duplicates("label").head(3)
        cells = [f"{r['label']} ({int(r['nfe'])} NFE): {r[metric]:.2e}" for _, r in top.iterrows()]
        recs.append({"NFE budget": f"≤ {b}", "best": cells[0],
                     "2nd": cells[1] if len(cells) > 1 else "—",
                     "3rd": cells[2] if len(cells) > 2 else "—"})
    return pd.DataFrame(recs)


HEADLINE_BUDGETS = (10, 40)


def headline_table(df: pd.DataFrame, budgets=HEADLINE_BUDGETS) -> pd.DataFrame:
    """Solvers x (model, NFE budget): the lowest FID a solver reaches within the budget, with its
    NFE, over the models whose FID uses a learned feature network (e.g. the digits models), each
    column ranked within itself.  Rows are ordered by the first column."""
    ok = df[(df["status"] == "ok") & df["fid"].notna() & df["nfe"].notna() &
            df["fid_features"].fillna("data:").map(lambda f: not str(f).startswith("data:"))]
    cols = {}
    for model, g in ok.groupby("model", sort=False):
        for b in budgets:
            within = g[g["nfe"] <= b]
            # ties (e.g. ddim and dpm_solver_1, the same update) by NFE, then name: the table
            # is a function of the rows alone
            best = within.sort_values(["fid", "nfe", "label"], kind="stable").drop_duplicates(
                "label")
            # competition ranking: equal FIDs (the same samples) share a rank
            fids = best["fid"].tolist()
            ranks = {lab: 1 + sum(f < fid for f in fids) for lab, fid in zip(best["label"], fids)}
            cols[f"{model} ≤ {b} NFE"] = {
                r["label"]: (r["fid"], f"{r['fid']:.1f} ({int(r['nfe'])}) #{ranks[r['label']]}")
                for _, r in best.iterrows()}
    if not cols:
        return pd.DataFrame()
    first = next(iter(cols.values()))
    labels = sorted({lab for c in cols.values() for lab in c},
                    key=lambda lab: (first[lab][0] if lab in first else math.inf, lab))
    table = pd.DataFrame({c: {lab: v[lab][1] if lab in v else "—" for lab in labels}
                          for c, v in cols.items()})
    return table.loc[labels]


def _md(table: pd.DataFrame, index: bool = True) -> str:
    if table.empty:
        return "_no rows_\n"
    cols = ([""] if index else []) + [str(c) for c in table.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for idx, r in table.iterrows():
        vals = ([str(idx)] if index else []) + ["—" if v is None or (isinstance(v, float) and
                                                 math.isnan(v)) else str(v) for v in r.values]
        lines.append("| " + " | ".join(vals) + " |")
    return "\n".join(lines) + "\n"


def _latex(table: pd.DataFrame, caption: str) -> str:
    cols = ["solver"] + [str(c) for c in table.columns]
    esc = lambda s: (str(s).replace("_", r"\_").replace("%", r"\%").replace("—", "--")
                     .replace("±", r"$\pm$"))
    lines = [r"\begin{table}[t]", r"\centering", r"\small",
             r"\begin{tabular}{l" + "r" * len(table.columns) + "}", r"\toprule",
             " & ".join(esc(c) for c in cols) + r" \\", r"\midrule"]
    for idx, r in table.iterrows():
        lines.append(" & ".join([esc(idx)] + [esc(v) for v in r.values]) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", rf"\caption{{{esc(caption)}}}", r"\end{table}", ""]
    return "\n".join(lines)


_MARKERS = "osD^v<>ph*"


def _style(i: int) -> dict:
    """Distinct colour / marker / line style for up to ~60 series."""
    import matplotlib

    cmap = matplotlib.colormaps["tab20"]
    return {"color": cmap(i % 20), "marker": _MARKERS[i % len(_MARKERS)],
            "linestyle": ("-", "--", "-.")[(i // 20) % 3]}


def _save(fig, path: Path) -> None:
    """PNG for the Markdown / HTML report, SVG beside it for papers.  Both are byte-for-byte
    functions of the rows: no creation date, fixed SVG element ids (a regenerated report differs
    from the last only where the numbers do)."""
    import matplotlib
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=130)
    with matplotlib.rc_context({"svg.hashsalt": "samplerbench"}):
        fig.savefig(path.with_suffix(".svg"), metadata={"Date": None})
    plt.close(fig)


def plot_vs_nfe(df: pd.DataFrame, metric: str, path: Path, title: str, ylabel: str,
                fit: bool) -> bool:
    """``metric`` vs counted NFE, one line per solver (log x; log y).  With ``fit`` the legend
    carries the fitted order and dashed reference slopes NFE^-1, NFE^-2, NFE^-4 are drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    ok = df[(df["status"] == "ok") & df[metric].notna() & (df[metric] > 0)]
    if ok.empty:
        return False
    fig, ax = plt.subplots(figsize=(9.0, 5.2))
    for i, (label, g) in enumerate(ok.groupby("label", sort=False)):
        g = g.sort_values("nfe")
        p = fit_order(g["nfe"], g[metric]) if fit else None
        tag = f"{label} (p≈{p:.2f})" if p is not None else label
        ax.loglog(g["nfe"], g[metric], ms=4, lw=1.3, label=tag, **_style(i))
    if fit:
        n0, n1 = float(ok["nfe"].min()), float(ok["nfe"].max())
        y0 = float(np.exp(np.log(ok[metric]).median()))
        xs = np.array([n0, n1])
        for k in (1, 2, 4):
            ax.loglog(xs, y0 * (xs / n0) ** -k, color="0.6", ls=":", lw=1)
            ax.annotate(f"NFE$^{{-{k}}}$", (n1, y0 * (n1 / n0) ** -k), fontsize=7,
                        color="0.4", clip_on=True)
        ax.set_ylim(float(ok[metric].min()) / 3, float(ok[metric].max()) * 3)
    ax.set_xlabel("NFE (counted)")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    _save(fig, path)
    return True


def plot_err_vs_nfe(df: pd.DataFrame, path: Path, title: str) -> bool:
    return plot_vs_nfe(df, "err_rms", path, title, "RMS error vs reference", fit=True)


def plot_nonconv(df: pd.DataFrame, path: Path, title: str) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = df[(df["status"] == "ok") & df["nonconv"].notna() & (df["nonconv"] > 0)]
    if ok.empty:
        return False
    fig, ax = plt.subplots(figsize=(9.0, 5.2))
    for i, (label, g) in enumerate(ok.groupby("label", sort=False)):
        g = g.sort_values("steps")
        ax.loglog(g["steps"], g["nonconv"], ms=4, lw=1.3, label=label, **_style(i))
    ax.set_xlabel("steps N")
    ax.set_ylabel("RMS(x_N − x_2N), same seed")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    _save(fig, path)
    return True


def plot_pareto(df: pd.DataFrame, path: Path, title: str) -> bool:
    """Error vs wall time per sample; the Pareto front (no cell is both faster and better)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = df[(df["status"] == "ok") & df["err_rms"].notna() & (df["err_rms"] > 0)
            & df["time_per_sample_s"].notna()].reset_index(drop=True)
    if ok.empty:
        return False
    fig, ax = plt.subplots(figsize=(9.0, 5.2))
    for i, (label, g) in enumerate(ok.groupby("label", sort=False)):
        st = _style(i)
        ax.loglog(g["time_per_sample_s"], g["err_rms"], ls="none", ms=4, label=label,
                  marker=st["marker"], color=st["color"])
    front = pareto_front(list(ok["time_per_sample_s"]), list(ok["err_rms"]))
    f = ok.iloc[front]
    ax.loglog(f["time_per_sample_s"], f["err_rms"], "k-", lw=1, alpha=0.6, label="Pareto front")
    ax.set_xlabel("wall time per sample, s (median of repeats)")
    ax.set_ylabel("RMS error vs float64 reference")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    _save(fig, path)
    return True


def _slug(s: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in s)


def write_report(run_dir: str | Path, formats=("md", "csv")) -> Path:
    """Library entry point of ``samplerbench report``; returns the report directory."""
    for f in formats:
        if f not in FORMATS:
            raise UserError("--format", f, FORMATS)
    run_dir = Path(run_dir)
    df = load_frame(run_dir)
    out = run_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    run_info = {}
    if (run_dir / "run.json").exists():
        run_info = json.loads((run_dir / "run.json").read_text())
    spec = run_info.get("spec", {})
    env = run_info.get("environment", {})

    md = [f"# samplerbench report: {spec.get('name', run_dir.name)}", ""]
    if spec.get("description"):
        md += [spec["description"], ""]
    sup = df.attrs.get("superseded", 0)
    md += [f"- rows: {len(df)} ({', '.join(f'{v} {k}' for k, v in df['status'].value_counts().items())})"
           + (f"; {sup} older rows of the same cells in rows.jsonl superseded" if sup else ""),
           f"- samples per cell: {spec.get('samples')}, seed: {spec.get('seed')} (sample i uses seed + i), "
           f"dtype: {spec.get('dtype')}, final: {spec.get('final')}",
           f"- reference: dopri8 in float64, rtol = {spec.get('ref_rtol')}, atol = {spec.get('ref_atol')}",
           f"- machine: {env.get('platform')}, torch {env.get('torch')}, device {env.get('device')}, "
           f"{env.get('torch_threads')} threads; git {env.get('git_sha')}",
           "- `err` = RMS over dimensions of (x − x_ref), mean over samples; NFE (counted) in "
           "parentheses. `nonconv` = RMS(x_N − x_2N) with the same seed.", ""]
    html_parts, tex_parts = [], []
    head = headline_table(df)
    if not head.empty:
        feats = sorted(set(df.loc[df["fid"].notna(), "fid_features"].dropna())
                       - {f for f in df["fid_features"].dropna() if str(f).startswith("data:")})
        intro = (f"## Headline: lowest FID within an NFE budget\n\nFID (NFE) #rank in the "
                 f"column; features {', '.join(feats)}. A solver's best cell with at most that many "
                 f"model calls; lower is better.\n")
        md += [intro, _md(head)]
        (out / "headline.md").write_text(intro + "\n" + _md(head))
        html_parts.append("<h2>Headline: lowest FID within an NFE budget</h2>"
                          + head.to_html(na_rep="—", escape=True))
        tex_parts.append(_latex(head, "Lowest FID within an NFE budget (NFE, rank)"))
    for (model, grid), g in df.groupby(["model", "grid_label"], sort=False):
        title = f"{model} — grid {grid}"
        md += [f"## {title}", ""]
        html_parts.append(f"<h2>{html.escape(title)}</h2>")
        err = metric_table(g, "err_rms")
        if g["err_rms"].notna().any():
            refs = sorted(set(g["reference"].dropna())) if "reference" in g else []
            md += ["### Error vs reference (NFE)", "",
                   *([f"References: {'; '.join(refs)}.", ""] if refs else []), _md(err)]
            html_parts.append(err.to_html(na_rep="—", escape=True))
            tex_parts.append(_latex(err, f"{title}: RMS error (NFE)"))
            orders = order_table(g[g["err_rms"].notna()])
            md += ["### Fitted order (last 3 points above the float floor, 95% CI)", "",
                   _md(orders.set_index("solver"))]
            png = f"err_vs_nfe_{_slug(model)}_{_slug(grid)}.png"
            if plot_err_vs_nfe(g, out / png, title):
                md += [f"![error vs NFE]({png})", ""]
                html_parts.append(f'<img src="{png}" alt="error vs NFE">')
        for metric, what in (("fid", "Fréchet distance / FID"), ("swd", "sliced Wasserstein")):
            if g[metric].notna().any():
                feats = sorted(set(g["fid_features"].dropna())) if metric == "fid" else []
                proto = f" — features: {', '.join(feats)}" if feats else ""
                md += [f"### Weak error: {what} (NFE){proto}", "", _md(metric_table(g, metric))]
                if metric == "fid":
                    png = f"fid_vs_nfe_{_slug(model)}_{_slug(grid)}.png"
                    if plot_vs_nfe(g, "fid", out / png, f"{title}: {what}", what, fit=False):
                        md += [f"![{what} vs NFE]({png})", ""]
                        html_parts.append(f'<img src="{png}" alt="fid vs nfe">')
        if "kid" in g and g["kid"].notna().any():
            protos = sorted(set(g["kid_protocol"].dropna())) if "kid_protocol" in g else []
            kt = kid_table(g)
            md += ["### KID, mean ± std over subsets (NFE)", "",
                   *([f"Protocol: {'; '.join(protos)}.", ""] if protos else []), _md(kt)]
            html_parts.append(f"<h3>{html.escape(title)}: KID</h3>"
                              + kt.to_html(na_rep="—", escape=True))
            tex_parts.append(_latex(kt, f"{title}: KID mean ± std (NFE)"))
        # each table ranks comparable numbers: the deterministic solvers' error against the ODE
        # reference, and the weak error (every solver, stochastic ones included)
        det = g[g["noise"].isna() & g["reference"].fillna("").str.startswith("dopri8")] \
            if "reference" in g else g.iloc[0:0]
        for best, what in ((best_per_budget(det), "lowest error vs the ODE reference, "
                            "deterministic solvers"),
                           (best_per_budget(g, "fid"), "lowest Fréchet distance / FID, all "
                            "solvers")):
            if not best.empty:
                md += [f"### Best solver per NFE budget ({what})", "", _md(best, index=False)]
                html_parts.append(best.to_html(index=False))
        if g["nonconv"].notna().any():
            nc = metric_table(g, "nonconv", with_nfe=False)
            md += ["### Non-convergence RMS(x_N − x_2N)", "", _md(nc)]
            html_parts.append(nc.to_html(na_rep="—"))
            png = f"nonconv_{_slug(model)}_{_slug(grid)}.png"
            if plot_nonconv(g, out / png, f"{title}: non-convergence"):
                md += [f"![nonconv vs steps]({png})", ""]
                html_parts.append(f'<img src="{png}" alt="nonconv">')
        wall = metric_table(g, "time_per_sample_s", with_nfe=False)
        md += ["### Wall time per sample, seconds (median of repeats)", "", _md(wall)]
        png = f"pareto_{_slug(model)}_{_slug(grid)}.png"
        if plot_pareto(g, out / png, f"{title}: error vs time"):
            md += [f"![error vs wall time]({png})", ""]
            html_parts.append(f'<img src="{png}" alt="pareto">')
        adaptive = g[g["steps"].isna() & (g["status"] == "ok")]
        if not adaptive.empty:
            md += ["### Adaptive solvers (tolerance → error, NFE)", ""]
            for _, r in adaptive.iterrows():
                tol = (r["solver_params"] or {}).get("rtol")
                md.append(f"- {r['label']} tol={tol:g}: err {_fmt(r['err_rms'], r['nfe'])}")
            md.append("")
        bad = g[g["status"] != "ok"]
        if not bad.empty:
            md += ["### Cells not ok", ""]
            for _, r in bad.iterrows():
                md.append(f"- {r['label']} steps={r['steps']}: **{r['status']}** — {r['message']}")
            md.append("")
    grids_png = sorted(out.glob("samples_*.png"))
    if grids_png:
        md += ["## Samples (`samplerbench preview`)", ""]
        for png in grids_png:
            md += [f"![{png.stem}]({png.name})", ""]
            html_parts.append(f'<img src="{png.name}" alt="{html.escape(png.stem)}">')
    if "md" in formats:
        (out / "README.md").write_text("\n".join(md))
    if "csv" in formats:
        flat_rows(df).to_csv(out / "rows.csv", index=False)
    if "parquet" in formats:
        flat_rows(df).to_parquet(out / "rows.parquet", index=False, engine="pyarrow")
    if "html" in formats:
        page = ("<!doctype html><html><head><meta charset='utf-8'><title>samplerbench report</title>"
                "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}"
                "table{border-collapse:collapse;font-size:12px}td,th{border:1px solid #ccc;"
                "padding:2px 6px}img{max-width:640px;display:block;margin:8px 0}</style></head>"
                f"<body><h1>samplerbench report: {html.escape(str(spec.get('name', run_dir.name)))}</h1>"
                + "\n".join(html_parts) + "</body></html>")
        (out / "report.html").write_text(page)
    if "latex" in formats:
        (out / "tables.tex").write_text("% requires \\usepackage{booktabs}\n" + "\n".join(tex_parts))
    return out
