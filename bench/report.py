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

from samplerbench.bench import stats
from samplerbench.bench.metrics import fit_order_ci
from samplerbench.bench.quality import REACHED_RMS
from samplerbench.bench.plots import (plot_err_vs_nfe, plot_headline, plot_metric, plot_nonconv,
                                      plot_pareto)
from samplerbench.bench.store import (atomic_write_bytes, atomic_write_text, latest_rows,
                                      read_rows)
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


def _num(v, se=None) -> str:
    """A quality number with its standard error, to the precision the se supports."""
    if v is None or pd.isna(v):
        return "—"
    if se is None or pd.isna(se) or se <= 0:
        return f"{v:.3g}"
    digits = max(0, 1 - int(math.floor(math.log10(se))))          # two significant in the se
    if abs(v) < 1e-2 or abs(v) >= 1e5:
        return f"{v:.2e} ± {se:.1e}"
    return f"{v:.{digits}f} ± {se:.{digits}f}"


def _status_cell(r) -> str:
    return {"diverged": "diverged", "failed": "failed", "skipped": "skipped"}.get(r["status"], "")


def _column(r):
    """A table column: the NFE budget of a budget cell, else the step count."""
    b = r.get("nfe_budget")
    return ("nfe", int(b)) if b is not None and not pd.isna(b) else ("steps", int(r["steps"]))


def _column_name(key) -> str:
    return f"≤ {key[1]} NFE" if key[0] == "nfe" else f"{key[1]} steps"


def _blocks(r, metric):
    b = r.get(f"{metric}_blocks")
    return b if isinstance(b, list) and b else None


def column_groups(df: pd.DataFrame, metric: str) -> dict:
    """{(column key, label): rank group} per table column of ``metric`` (lower is better): the
    paired tests of :func:`samplerbench.bench.stats.rank_groups` among the ok cells of a column
    that carry per-block values.  Memorising models are not ranked (their quality metric only
    says which training images were drawn)."""
    out = {}
    ok = df[(df["status"] == "ok") & df[metric].notna() & df["steps"].notna()]
    if "train_distinct" in ok:
        ok = ok[ok["train_distinct"].isna()]
    if ok.empty or f"{metric}_blocks" not in ok:
        return out
    cols: dict = {}
    for _, r in ok.iterrows():
        cols.setdefault((r["model"], r.get("grid_label"), _column(r)), []).append(r)
    for (_, _, key), rs in cols.items():
        rs = [r for r in rs if _blocks(r, metric)]
        if len(rs) < 2:
            continue
        groups = stats.rank_groups([{"value": r[metric], "blocks": _blocks(r, metric)}
                                    for r in rs])
        for r, g in zip(rs, groups):
            out[(key, r["label"])] = g
    return out


def metric_table(df: pd.DataFrame, metric: str, with_nfe: bool = True, cell=None,
                 groups: dict | None = None) -> pd.DataFrame:
    """Solvers x (steps or NFE budget) table of ``metric`` for one (model, grid): the value, its
    standard error where the rows have one (``<metric>_se``), the counted NFE in parentheses and,
    with ``groups`` (:func:`column_groups`), the rank group as "g1", "g2", ...
    ``cell(row) -> str`` formats a cell instead (status cells take precedence)."""
    se = f"{metric}_se"

    def default(r):
        if r.get(se) is not None and not pd.isna(r.get(se)) or metric in ("fid", "kid", "swd"):
            v = _num(r[metric], r.get(se))
            return f"{v} ({int(r['nfe'])})" if with_nfe and not pd.isna(r["nfe"]) else v
        return _fmt(r[metric], r["nfe"] if with_nfe else None)

    fmt = cell or default
    fixed = df[df["steps"].notna()]
    out = {}
    for label, g in fixed.groupby("label", sort=False):
        row = {}
        for _, r in g.iterrows():
            key = _column(r)
            text = _status_cell(r) or fmt(r)
            if groups and (key, label) in groups:
                text += f" g{groups[(key, label)]}"
            row[key] = text
        out[label] = row
    table = pd.DataFrame(out).T
    if not table.empty:
        table = table[sorted(table.columns)]
        table.columns = [_column_name(c) for c in table.columns]
    return table


def flat_rows(df: pd.DataFrame) -> pd.DataFrame:
    """The rows as stored (no report columns), nested parameters as JSON text."""
    flat = df.drop(columns=["label", "grid_label"]).copy()
    for c in flat.columns:            # nested values (parameters, per-block values): JSON text
        if c in ("solver_params", "grid_params") or flat[c].map(
                lambda v: isinstance(v, (list, dict))).any():
            flat[c] = flat[c].map(lambda v: None if v is None or (isinstance(v, float) and
                                                                  math.isnan(v))
                                  else json.dumps(v, sort_keys=True))
    return flat


def order_table(df: pd.DataFrame) -> pd.DataFrame:
    """Fitted vs declared order per fixed-step solver (adaptive solvers have no step-count
    asymptotics and are left out).  A 95% interval wider than +-1 is flagged "not asymptotic":
    the step range did not reach the solver's asymptotic regime."""
    recs = []
    fixed = df[(df["status"] == "ok") & df["steps"].notna()]
    for (label, solver), g in fixed.groupby(["label", "solver"], sort=False):
        p, lo, hi = fit_order_ci(g["nfe"], g["err_rms"])
        declared = declared_order(solver)
        params = g["solver_params"].iloc[0] or {}
        if "solver_order" in params:                        # declared order is per instance
            try:
                from samplerbench.solvers.registry import get_solver

                declared = get_solver(solver, **params).order
            except Exception:
                pass
        ci = "—" if lo is None else f"[{lo:.2f}, {hi:.2f}]"
        if lo is not None and hi - lo > 2.0:
            ci += " not asymptotic"
        recs.append({"solver": label, "declared order": declared,
                     "fitted order": None if p is None else round(p, 2),
                     "95% CI": ci,
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


def headline_cells(df: pd.DataFrame) -> pd.DataFrame:
    """The cells a headline ranks: ok budget cells with a learned-feature FID, of models that do
    not memorise their training set."""
    if "nfe_budget" not in df:
        return df.iloc[0:0]
    ok = df[(df["status"] == "ok") & df["fid"].notna() & df["nfe_budget"].notna() &
            df["fid_features"].fillna("data:").map(lambda f: not str(f).startswith("data:"))]
    if "train_distinct" in ok:
        ok = ok[ok["train_distinct"].isna()]
    return ok


def alias_names(cells: pd.DataFrame, column: str = "nfe_budget") -> dict[str, str]:
    """{label: "a = b"} for one model's cells: two solvers are aliases when their samples are
    identical (:func:`samplerbench.bench.stats.alias_groups`) in every column where both have
    a cell."""
    same: dict = {}
    for _, cells_b in cells.groupby(column, sort=True):
        recs = [r for _, r in cells_b.iterrows()]
        labels = [r["label"] for r in recs]
        in_group = {}
        for k, grp in enumerate(stats.alias_groups([dict(r) for r in recs])):
            for i in grp:
                in_group[labels[i]] = k
        for x in labels:
            for y in labels:
                if x < y:
                    same[(x, y)] = same.get((x, y), True) and in_group[x] == in_group[y]
    parent = {lab: lab for lab in cells["label"]}

    def root(x):
        while parent[x] != x:
            x = parent[x]
        return x

    for (x, y), eq in same.items():
        if eq:
            parent[root(y)] = root(x)
    members: dict = {}
    for lab in parent:
        members.setdefault(root(lab), []).append(lab)
    return {lab: " = ".join(sorted(members[root(lab)])) for lab in parent}


def headline_table(df: pd.DataFrame, model: str) -> tuple[pd.DataFrame, dict]:
    """Solvers x NFE budgets of one model: FID ± se (counted NFE) and the rank group g1, g2, ...
    of the paired tests within the budget's column; aliases (identical samples) are one row;
    a budget whose cell is the solver's cell at the previous budget (the same step count) says
    "=".  Rows are ordered by their mean rank group, then by FID at the largest budget.
    Returns (table, {budget: floor (mean, sd)})."""
    ok = headline_cells(df)
    ok = ok[ok["model"] == model]
    if ok.empty:
        return pd.DataFrame(), {}
    names = alias_names(ok)
    cols, floors, order = {}, {}, {}
    prev_steps: dict = {}
    for b in sorted(int(x) for x in ok["nfe_budget"].unique()):
        cells = ok[ok["nfe_budget"] == b]
        entries: dict = {}
        for _, r in cells.iterrows():
            entries.setdefault(names[r["label"]], r)        # one cell per alias set
        labels = list(entries)
        groups = stats.rank_groups([{"value": entries[lab]["fid"],
                                     "blocks": _blocks(entries[lab], "fid")} for lab in labels])
        col = {}
        for lab, g in zip(labels, groups):
            r = entries[lab]
            tested = _blocks(r, "fid") is not None           # no blocks: no test, no group
            same = prev_steps.get(lab) == r["steps"]
            col[lab] = (f"{_num(r['fid'], r.get('fid_se'))} ({int(r['nfe'])})"
                        + (f" g{g}" if tested else "") + (" =" if same else ""))
            prev_steps[lab] = r["steps"]
            order.setdefault(lab, []).append((g, r["fid"]))
        cols[f"≤ {b} NFE"] = col
        f = cells["fid_floor"].dropna() if "fid_floor" in cells else []
        if len(f):
            floors[b] = (float(f.iloc[0]), float(cells["fid_floor_sd"].dropna().iloc[0]))
    labels = sorted(order, key=lambda lab: (sum(g for g, _ in order[lab]) / len(order[lab]),
                                            order[lab][-1][1], lab))
    table = pd.DataFrame({c: {lab: v.get(lab, "—") for lab in labels} for c, v in cols.items()})
    return table.loc[labels], floors


def group_one_table(df: pd.DataFrame, most: int = 6) -> pd.DataFrame:
    """NFE budgets x models: the solvers in rank group 1 (no paired test separates them from the
    best cell of the column), best first, with FID ± se; the answer to "which solver at this
    budget" that the data support (the ``most`` best are named, the rest counted)."""
    ok = headline_cells(df)
    out: dict = {}
    for model in dict.fromkeys(ok["model"]):
        cells = ok[ok["model"] == model]
        names = alias_names(cells)
        col = {}
        for b in sorted(int(x) for x in cells["nfe_budget"].unique()):
            entries: dict = {}
            for _, r in cells[cells["nfe_budget"] == b].iterrows():
                entries.setdefault(names[r["label"]], r)
            labels = list(entries)
            if not all(_blocks(entries[lab], "fid") for lab in labels):
                continue
            groups = stats.rank_groups([{"value": entries[lab]["fid"],
                                         "blocks": _blocks(entries[lab], "fid")}
                                        for lab in labels])
            first = sorted((entries[lab]["fid"], lab) for lab, g in zip(labels, groups) if g == 1)
            shown = ", ".join(f"{lab} {_num(v, entries[lab].get('fid_se'))}"
                              for v, lab in first[:most])
            col[f"≤ {b} NFE"] = shown + (f" (+{len(first) - most} more)"
                                         if len(first) > most else "")
        out[model] = col
    return pd.DataFrame(out)


def pixel_twin(model: str, models) -> str | None:
    """The pixel-space model a latent model is compared with: its name without ``latent-``
    (``digits-latent-rf`` -> ``digits-rf``), if that model is among ``models``."""
    if "latent-" not in str(model):
        return None
    twin = str(model).replace("latent-", "", 1)
    return twin if twin in set(models) else None


def _column_entries(cells: pd.DataFrame, names: dict) -> dict:
    entries: dict = {}
    for _, r in cells.iterrows():
        entries.setdefault(names[r["label"]], r)
    return {lab: r for lab, r in entries.items() if _blocks(r, "fid")}


def _first_group(entries: dict) -> tuple[list[str], str | None]:
    labels = list(entries)
    if not labels:
        return [], None
    groups = stats.rank_groups([{"value": entries[lab]["fid"],
                                 "blocks": _blocks(entries[lab], "fid")} for lab in labels])
    first = [lab for _, lab in sorted((entries[lab]["fid"], lab)
                                      for lab, g in zip(labels, groups) if g == 1)]
    return first, first[0]


def spearman(a: list[float], b: list[float]) -> float | None:
    """Spearman's rank correlation (average ranks for ties); None below 3 pairs or for a
    constant side."""
    from scipy import stats as sps

    if len(a) < 3:
        return None
    rho = sps.spearmanr(a, b).statistic
    return float(rho) if math.isfinite(rho) else None


def latent_pixel_table(df: pd.DataFrame) -> pd.DataFrame:
    """Latent vs pixel space (issue 14): for each latent model with a pixel-space twin
    (:func:`pixel_twin`) and each NFE budget both were run at, whether sampling in the latent
    space changes which solver wins.  Columns: the solvers in rank group 1 of each model (best
    first, count), whether each model's best solver is in the other model's group 1, and
    Spearman's rank correlation of the solvers' FIDs between the two models with its
    delete-one-seed-block jackknife se (both models share the seed blocks), and the best FID
    of each with the paired test of their difference on the shared seed blocks.  Only solvers with
    an ok, blocked cell in both models enter; aliases (identical samples) are one solver."""
    ok = headline_cells(df)
    models = list(dict.fromkeys(ok["model"]))
    rows = []
    for lat in models:
        pix = pixel_twin(lat, models)
        if pix is None:
            continue
        names = alias_names(ok[ok["model"] == pix])
        names_l = alias_names(ok[ok["model"] == lat])
        names.update({k: names.get(k, v) for k, v in names_l.items()})
        budgets = sorted(set(ok[ok["model"] == pix]["nfe_budget"].astype(int))
                         & set(ok[ok["model"] == lat]["nfe_budget"].astype(int)))
        for b in budgets:
            ep = _column_entries(ok[(ok["model"] == pix) & (ok["nfe_budget"] == b)], names)
            el = _column_entries(ok[(ok["model"] == lat) & (ok["nfe_budget"] == b)], names)
            both = sorted(set(ep) & set(el))
            ep = {k: ep[k] for k in both}
            el = {k: el[k] for k in both}
            if len(both) < 3:
                continue
            gp, bp = _first_group(ep)
            gl, bl = _first_group(el)
            rho = spearman([ep[k]["fid"] for k in both], [el[k]["fid"] for k in both])
            nb = {len(_blocks(ep[k], "fid")) for k in both} | {len(_blocks(el[k], "fid"))
                                                                for k in both}
            se = None
            if len(nb) == 1:
                loo = [spearman([_blocks(ep[k], "fid")[i] for k in both],
                                [_blocks(el[k], "fid")[i] for k in both]) for i in range(nb.pop())]
                se = stats.jackknife_se(loo) if all(v is not None for v in loo) else None
            shown = 4
            test = stats.paired(el[bl]["fid"], _blocks(el[bl], "fid"),
                                ep[bp]["fid"], _blocks(ep[bp], "fid"))
            best = (f"{_num(test['diff'], test['se'])}"
                    + ("" if test["p"] is None else f" (p {test['p']:.2g})"))
            rows.append({
                "pixel model": pix, "latent model": lat, "NFE budget": f"≤ {b}",
                "solvers": len(both),
                "pixel group 1": ", ".join(gp[:shown]) + (f" (+{len(gp) - shown})"
                                                            if len(gp) > shown else ""),
                "latent group 1": ", ".join(gl[:shown]) + (f" (+{len(gl) - shown})"
                                                             if len(gl) > shown else ""),
                "pixel best in latent g1": "yes" if bp in gl else "no",
                "latent best in pixel g1": "yes" if bl in gp else "no",
                "rank corr. ± se": "—" if rho is None else _num(rho, se),
                "best FID pixel / latent": (f"{_num(ep[bp]['fid'], ep[bp].get('fid_se'))} / "
                                            f"{_num(el[bl]['fid'], el[bl].get('fid_se'))}"),
                "latent − pixel (best cells, paired)": best,
            })
    return pd.DataFrame(rows)


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


def _slug(s: str, most: int = 60) -> str:
    """A file-name-safe form of ``s``; a long one (a ``list`` grid's values) is cut to ``most``
    characters plus a hash of the whole, so that file names stay within the OS's limit."""
    out = "".join(c if c.isalnum() or c in "-_" else "_" for c in s)
    if len(out) > most:
        import hashlib

        out = out[:most] + "_" + hashlib.sha1(s.encode()).hexdigest()[:10]
    return out


class Doc:
    """The report as a list of blocks, rendered alike to Markdown, HTML and LaTeX (the HTML
    carries every heading, paragraph, captioned table and figure of the Markdown)."""

    def __init__(self):
        self.blocks: list[tuple] = []

    def h(self, level: int, text: str):
        self.blocks.append(("h", level, text))

    def p(self, text: str):
        self.blocks.append(("p", text))

    def items(self, lines: list[str]):
        if lines:
            self.blocks.append(("ul", lines))

    def table(self, table: pd.DataFrame, caption: str, index: bool = True):
        self.blocks.append(("table", table, caption, index))

    def img(self, src: str, alt: str):
        self.blocks.append(("img", src, alt))

    def markdown(self) -> str:
        out = []
        for b in self.blocks:
            if b[0] == "h":
                out += ["#" * b[1] + " " + b[2], ""]
            elif b[0] == "p":
                out += [b[1], ""]
            elif b[0] == "ul":
                out += [f"- {x}" for x in b[1]] + [""]
            elif b[0] == "table":
                out += [f"_{b[2]}_", "", _md(b[1], index=b[3])]
            elif b[0] == "img":
                out += [f"![{b[2]}]({b[1]})", ""]
        return "\n".join(out)

    def html(self, title: str) -> str:
        import re

        def inline(t: str) -> str:
            t = html.escape(t)
            t = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", t)
            t = re.sub(r"`(.+?)`", r"<code>\1</code>", t)
            return re.sub(r"\[(.+?)\]\((.+?)\)", r'<a href="\2">\1</a>', t)

        parts = []
        for b in self.blocks:
            if b[0] == "h":
                parts.append(f"<h{b[1]}>{inline(b[2])}</h{b[1]}>")
            elif b[0] == "p":
                parts.append(f"<p>{inline(b[1])}</p>")
            elif b[0] == "ul":
                parts.append("<ul>" + "".join(f"<li>{inline(x)}</li>" for x in b[1]) + "</ul>")
            elif b[0] == "table":
                t = b[1].to_html(na_rep="—", escape=True, index=b[3])
                parts.append(t.replace(">\n  <thead>", f">\n<caption>{inline(b[2])}</caption>\n"
                                       "  <thead>", 1))
            elif b[0] == "img":
                parts.append(f'<figure><img src="{html.escape(b[1])}" alt="{html.escape(b[2])}">'
                             f"<figcaption>{html.escape(b[2])}</figcaption></figure>")
        return ("<!doctype html><html><head><meta charset='utf-8'><title>samplerbench report"
                "</title><style>body{font-family:sans-serif;max-width:1200px;margin:auto}"
                "table{border-collapse:collapse;font-size:12px;margin:8px 0}td,th{border:1px "
                "solid #ccc;padding:2px 6px}caption{text-align:left;font-style:italic;"
                "padding:4px 0}img{max-width:100%;display:block;margin:8px 0}"
                "figcaption{font-size:12px;color:#555}</style></head><body>"
                f"<h1>samplerbench report: {html.escape(title)}</h1>" + "\n".join(parts)
                + "</body></html>")

    def latex(self) -> str:
        return "\n".join(_latex(b[1], b[2]) for b in self.blocks if b[0] == "table")


def _floor_line(g: pd.DataFrame, metric: str, what: str) -> str | None:
    """The floor of ``metric`` beside its table: exact / real samples at the same count."""
    col = f"{metric}_floor"
    if col not in g or not g[col].notna().any():
        return None
    parts = []
    for n, h in g[g[col].notna()].groupby("n_samples"):
        parts.append(f"{_num(h[col].iloc[0])} ± {h[f'{metric}_floor_sd'].iloc[0]:.2g} at "
                     f"n = {int(n)}")
    return (f"Floor ({what} of exact samples from the data distribution at the same sample "
            f"count, mean ± sd over {stats.FLOOR_DRAWS} draws): " + "; ".join(parts) + ".")


RANK_NOTE = ("`g1`, `g2`, ...: rank groups within a column. Every cell of a column starts from "
             "the same seeds; group 1 is the best cell and every cell whose difference from it "
             "is not significant in a paired test (delete-one-block jackknife over the "
             "seed blocks, Student t with blocks − 1 degrees of freedom, two-sided level "
             f"{stats.LEVEL}), group 2 starts at the best cell not yet grouped, and so on. "
             "Cells in one group cannot be told apart at this sample count. Values are "
             "`value ± se` (jackknife standard error over the seed blocks).")


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
    name = str(spec.get("name", run_dir.name))

    doc = Doc()
    if spec.get("description"):
        doc.p(spec["description"])
    sup = df.attrs.get("superseded", 0)
    blocks = spec.get("blocks")
    doc.items([
        f"rows: {len(df)} ({', '.join(f'{v} {k}' for k, v in df['status'].value_counts().items())})"
        + (f"; {sup} older rows of the same cells in rows.jsonl superseded" if sup else ""),
        f"samples per cell: {spec.get('samples')}, seed: {spec.get('seed')} (sample i uses "
        f"seed + i), seed blocks: {blocks or '—'}, dtype: {spec.get('dtype')}, final: "
        f"{spec.get('final')}",
        f"reference: dopri8 in float64, rtol = {spec.get('ref_rtol')}, atol = "
        f"{spec.get('ref_atol')}",
        f"machine: {env.get('platform')}, torch {env.get('torch')}, device {env.get('device')}, "
        f"{env.get('torch_threads')} threads; git {env.get('git_sha')}",
        "`err` = RMS over dimensions of (x − x_ref), mean over samples; NFE (counted) in "
        "parentheses. `nonconv` = RMS(x_N − x_2N) with the same seed. Diverged cells (NaN/inf, "
        "or finite samples beyond 10× the data scale) and failed cells are left out of fits, "
        "rankings and plots, and counted per model.", RANK_NOTE])

    head_models = list(dict.fromkeys(headline_cells(df)["model"]))
    headline_md = []
    series: dict = {}
    if head_models:
        feats = sorted(set(headline_cells(df)["fid_features"].dropna()))
        doc.h(2, "Headline: FID at equal NFE budgets, with rank groups")
        doc.p(f"FID ± se (counted NFE) g<rank group>, features {', '.join(feats)}; lower is "
              "better. One cell per solver per budget: the largest step count whose counted "
              "NFE is within the budget; `=`: the same cell as at the previous budget. Solvers "
              "whose samples are identical are one row (`a = b`). Rank groups `g1`, `g2`: "
              "see the note above.")
        for model in head_models:
            table, floors = headline_table(df, model)
            n = int(df[df["model"] == model]["n_samples"].iloc[0])
            cap = (f"{model}: FID ± se (NFE) and rank group, {n} samples per cell. Floor (FID "
                   f"of {n} real digits against the reference, mean ± sd): "
                   f"{next(iter(floors.values()))[0]:.3g} ± "
                   f"{next(iter(floors.values()))[1]:.2g}" if floors else f"{model}")
            doc.h(3, model)
            doc.table(table, cap)
            headline_md += [f"#### {model}", "", f"_{cap}_", "", _md(table)]
            series[model] = _headline_series(df, model, floors)
        if plot_headline(series, out / "headline.png",
                         "FID ± se vs NFE budget: the solvers most often in rank group 1 at "
                         "≤ 10 NFE, with euler and heun",
                         "FID (digits features)"):
            doc.img("headline.png", "FID vs NFE budget, headline solvers, with the floor")
        top = group_one_table(df)
        if not top.empty:
            doc.h(3, "Group 1 at each budget")
            doc.table(top, "The solvers no paired test separates from the best cell at each "
                      "NFE budget (FID ± se), best first")
        lp = latent_pixel_table(df)
        if not lp.empty:
            doc.h(3, "Latent vs pixel space: does the winner change?")
            doc.p("Each latent model against the pixel-space model of the same schedule and "
                  "prediction, at the same NFE budgets and seeds. FID of the latent model is "
                  "computed on its decoded images with the same feature network. Group 1: the "
                  "solvers no paired test separates from the best cell (best first, count of "
                  "the rest). Rank correlation: Spearman's ρ between the two models' FIDs over "
                  "the solvers both ran, ± its delete-one-seed-block jackknife se. Last column: "
                  "the best latent cell's FID minus the best pixel cell's, ± the jackknife se "
                  "of the paired difference on the shared seed blocks, and its p.")
            doc.table(lp, "Latent vs pixel: group 1, whether each best solver is in the other "
                      "model's group 1, and the rank correlation of the solvers' FIDs",
                      index=False)
        floors_txt = "; ".join(
            f"{m}: {float(headline_cells(df)[headline_cells(df)['model'] == m]['fid_floor'].iloc[0]):.3g}"
            for m in head_models if "fid_floor" in df)
        atomic_write_text(out / "summary.md", 
            "Rank group 1 at each NFE budget: the solvers that no paired test on the shared seeds "
            "separates from the best cell (FID ± se, best first; `a = b`: identical samples). "
            f"Floor (real digits, same sample count): {floors_txt}.\n\n" + _md(top))
        atomic_write_text(out / "headline.md", 
            "Rank group 1 at each NFE budget: the solvers that no paired test on the shared seeds "
            "separates from the best cell (FID ± se, best first; `a = b`: identical samples). "
            f"Floor (real digits, same sample count): {floors_txt}.\n\n" + _md(top) + "\n"
            "FID ± se (counted NFE) g<rank group> at equal NFE budgets; `=`: the same cell as at "
            "the previous budget; `a = b`: identical samples. " + RANK_NOTE + "\n\n"
            + "\n".join(headline_md))

    for (model, grid), g in df.groupby(["model", "grid_label"], sort=False):
        title = f"{model} — grid {grid}"
        doc.h(2, title)
        bad = g[g["status"].isin(["diverged", "failed"])]
        if len(bad):
            doc.p(f"{len(bad)} cells diverged or failed (listed at the end of this section) and "
                  "are left out of the tables' rankings, the fits and the plots.")
        memorises = "train_distinct" in g and g["train_distinct"].notna().any()
        if g["err_rms"].notna().any():
            refs = sorted(set(g["reference"].dropna())) if "reference" in g else []
            doc.h(3, "Error vs reference (NFE)")
            if refs:
                doc.p(f"References: {'; '.join(refs)}.")
            doc.table(metric_table(g, "err_rms"), f"{title}: RMS error (NFE)")
            orders = order_table(g[g["err_rms"].notna()])
            if not orders.empty:
                doc.h(3, "Fitted order")
                doc.table(orders.set_index("solver"), f"{title}: fitted order (last 3 points "
                          "above the float floor, 95% CI; adaptive solvers left out)")
            png = f"err_vs_nfe_{_slug(model)}_{_slug(grid)}.png"
            if plot_err_vs_nfe(g, out / png, title):
                doc.img(png, f"{title}: error vs NFE")
        if memorises:
            doc.h(3, "Memorisation: training images reached")
            doc.p("This model's exact denoiser maps noise to training images, so its FID only "
                  "measures which training images were drawn: it is not ranked by FID. Ranked "
                  "instead by the error against the reference and by how many distinct training "
                  f"images the samples reached (within RMS "
                  f"{REACHED_RMS}).")
            doc.table(metric_table(g, "train_distinct", with_nfe=True, cell=lambda r: "—" if pd.isna(
                r["train_distinct"]) else (f"{int(r['train_distinct'])} / {int(r['n_samples'])} "
                                           f"({r['train_reached']:.0%} reached)")),
                f"{title}: distinct training images reached / samples")
        groups = {} if memorises else None
        for metric, what in (("fid", "Fréchet distance / FID"), ("swd", "sliced Wasserstein"),
                             ("kid", "KID")):
            if metric not in g or not g[metric].notna().any():
                continue
            feats = (sorted(set(g["fid_features"].dropna())) if metric == "fid" else
                     sorted(set(g["kid_protocol"].dropna())) if metric == "kid" else [])
            proto = f" — features: {', '.join(feats)}" if feats else ""
            doc.h(3, f"{what}{proto}")
            grp = column_groups(g, metric) if groups is None else {}
            has_se = f"{metric}_se" in g and g[f"{metric}_se"].notna().any()
            if has_se:
                doc.p("Values are `value ± se`; " + (
                    "`g1`, `g2`, ...: rank groups within each column (paired tests on the shared "
                    "seeds, see the note at the top)." if grp else "not ranked."))
            else:
                doc.p("No standard error in these rows (fewer samples than the jackknife "
                      "needs, or rows written before seed blocks): values only, no ranking.")
            floor = _floor_line(g, metric, what)
            if floor:
                doc.p(floor)
            doc.table(metric_table(g, metric, groups=grp), f"{title}: {what} (NFE)")
            if metric == "fid":
                png = f"fid_vs_nfe_{_slug(model)}_{_slug(grid)}.png"
                if plot_metric(g, "fid", out / png, f"{title}: {what}", what):
                    doc.img(png, f"{title}: {what} vs NFE")
        det = g[g["noise"].isna() & g["reference"].fillna("").str.startswith("dopri8")] \
            if "reference" in g else g.iloc[0:0]
        best = best_per_budget(det)
        if not best.empty:
            doc.h(3, "Lowest error vs the ODE reference per NFE budget (deterministic solvers)")
            doc.table(best, f"{title}: lowest RMS error within each NFE budget", index=False)
        if g["nonconv"].notna().any():
            doc.h(3, "Non-convergence RMS(x_N − x_2N)")
            doc.table(metric_table(g, "nonconv", with_nfe=False), f"{title}: non-convergence")
            png = f"nonconv_{_slug(model)}_{_slug(grid)}.png"
            if plot_nonconv(g, out / png, f"{title}: non-convergence"):
                doc.img(png, f"{title}: non-convergence vs steps")
        doc.h(3, "Wall time per sample, seconds")
        doc.table(metric_table(g, "time_per_sample_s", with_nfe=False),
                  f"{title}: wall time per sample (median of repeats, or the one solve of a "
                  "cell over [timing] single_over_s)")
        png = f"pareto_{_slug(model)}_{_slug(grid)}.png"
        if plot_pareto(g, out / png, f"{title}: error vs time"):
            doc.img(png, f"{title}: error vs wall time, Pareto front")
        adaptive = g[g["steps"].isna() & (g["status"] == "ok")]
        if not adaptive.empty:
            doc.h(3, "Adaptive solvers (tolerance → error, NFE)")
            doc.items([f"{r['label']} tol={(r['solver_params'] or {}).get('rtol'):g}: err "
                       f"{_fmt(r['err_rms'], r['nfe'])}" for _, r in adaptive.iterrows()])
        bad = g[g["status"] != "ok"]
        if not bad.empty:
            doc.h(3, "Cells not ok")
            doc.items([f"{r['label']} steps={r['steps']}: **{r['status']}** — {r['message']}"
                       for _, r in bad.iterrows()])
    grids_png = sorted(out.glob("samples_*.png"))
    if grids_png:
        doc.h(2, "Samples (`samplerbench preview`)")
        for png in grids_png:
            doc.img(png.name, png.stem)
    if "md" in formats:
        atomic_write_text(out / "README.md", f"# samplerbench report: {name}\n\n" + doc.markdown())
    if "csv" in formats:
        atomic_write_text(out / "rows.csv", flat_rows(df).to_csv(index=False))
    if "parquet" in formats:
        atomic_write_bytes(out / "rows.parquet",
                           flat_rows(df).to_parquet(index=False, engine="pyarrow"))
    if "html" in formats:
        atomic_write_text(out / "report.html", doc.html(name))
    if "latex" in formats:
        atomic_write_text(out / "tables.tex", "% requires \\usepackage{booktabs}\n" + doc.latex())
    return out


def _headline_series(df: pd.DataFrame, model: str, floors: dict, small: int = 10) -> dict:
    """The headline figure's series for one model: the solvers most often in rank group 1 at
    the budgets <= ``small`` NFE (at most 6), plus euler and heun as baselines, FID ± se per
    budget; the floor band."""
    ok = headline_cells(df)
    ok = ok[ok["model"] == model]
    budgets = sorted(int(b) for b in ok["nfe_budget"].unique())
    if not budgets:
        return {}
    names = alias_names(ok)
    count: dict = {}
    for b in [x for x in budgets if x <= small] or budgets[:1]:
        entries: dict = {}
        for _, r in ok[ok["nfe_budget"] == b].iterrows():
            entries.setdefault(names[r["label"]], r)
        labels = list(entries)
        groups = stats.rank_groups([{"value": entries[lab]["fid"],
                                     "blocks": _blocks(entries[lab], "fid")} for lab in labels])
        for lab, gi in zip(labels, groups):
            if gi == 1:
                count[lab] = count.get(lab, 0) + 1
    picks = sorted(count, key=lambda lab: (-count[lab], lab))[:6]
    for base in ("euler", "heun"):
        if base in names and names[base] not in picks:
            picks.append(names[base])
    series: dict = {}
    for pick in picks[:8]:
        names = pick.split(" = ")
        rows = ok[ok["label"] == names[0]]
        series[pick] = [(int(r["nfe_budget"]), r["fid"], r.get("fid_se"))
                        for _, r in rows.iterrows()]
    if floors:
        series[None] = floors[budgets[-1]]
    return series
