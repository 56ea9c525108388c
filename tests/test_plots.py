"""Figures a reader can read (issue 17): every plot kind, rendered from a fixture with many
solvers, keeps each legend and axes box inside the canvas, has no overlapping tick labels and
puts at most 8 series in one axes box; and the HTML report carries every section of the
Markdown."""

import math
import re

import pandas as pd
import pytest

from samplerbench.bench import plots

SOLVERS = [("euler", None), ("ddim", None), ("dpm_solver_1", None), ("heun", None),
           ("midpoint", None), ("ralston", None), ("bosh3", None), ("rk4", None),
           ("dpm_solver_2", None), ("dpm_solver_3", None), ("dpmpp_2s", None), ("dpm_2", None),
           ("edm_heun", None), ("dpmpp_2m", None), ("dpmpp_3m", None), ("lms", None),
           ("adams_bashforth", None), ("unipc_bh1", None), ("unipc_bh2", None), ("deis", None),
           ("ipndm", None), ("ipndm_v", None), ("dopri5", None),
           ("euler_ancestral", "fresh"), ("ddpm", "fresh"), ("dpmpp_2m_sde", "fresh"),
           ("euler_ancestral", "brownian"), ("dpmpp_2m_sde", "brownian")]


@pytest.fixture(scope="module")
def frame():
    rows = []
    for k, (s, noise) in enumerate(SOLVERS):
        for steps in (4, 8, 16, 32, 64):
            nfe = steps * (1 + k % 3)
            rows.append({"label": s + (f" [{noise}]" if noise else ""), "solver": s,
                         "noise": noise, "steps": steps, "nfe": nfe, "status": "ok",
                         "err_rms": 3.0 / nfe ** (1 + k % 3) * (1 + 0.1 * k),
                         "err_rms_se": 0.01 / nfe, "fid": 5 + 200 / nfe * (1 + k / 10),
                         "fid_se": 0.5, "nonconv": 1.0 / steps, "time_per_sample_s": nfe * 1e-4})
    rows.append({**rows[0], "status": "diverged", "err_rms": None})
    return pd.DataFrame(rows)


def _check(fig):
    fig.canvas.draw()
    r = fig.canvas.get_renderer()
    W, H = fig.canvas.get_width_height()
    inside = lambda b: b.x0 >= -1 and b.y0 >= -1 and b.x1 <= W + 1 and b.y1 <= H + 1
    for ax in fig.axes:
        if not ax.get_visible():
            continue
        assert inside(ax.get_window_extent(r))
        leg = ax.get_legend()
        if leg is not None:
            assert inside(leg.get_window_extent(r)), "legend outside the canvas"
            assert len(leg.get_texts()) <= plots.MAX_SERIES + 2      # + Pareto/floor entries
        series = [ln for ln in ax.get_lines() if ln.get_marker() not in (None, "None", "")]
        assert len({ln.get_label() for ln in series if not ln.get_label().startswith("_")}) \
            <= plots.MAX_SERIES
        for axis in (ax.xaxis, ax.yaxis):
            boxes = [t.get_window_extent(r) for t in axis.get_ticklabels()
                     if t.get_visible() and t.get_text()]
            for a, b in zip(boxes, boxes[1:]):
                assert not a.overlaps(b), "overlapping tick labels"
    return True


@pytest.fixture
def captured(monkeypatch):
    figs = []

    def save(fig, path):
        figs.append(fig)
        fig.savefig(path, dpi=60)

    monkeypatch.setattr(plots, "_save", save)
    return figs


def test_every_plot_kind_is_readable(frame, captured, tmp_path):
    assert plots.plot_err_vs_nfe(frame, tmp_path / "a.png", "err")
    assert plots.plot_metric(frame, "fid", tmp_path / "b.png", "fid", "FID")
    assert plots.plot_nonconv(frame, tmp_path / "c.png", "nonconv")
    assert plots.plot_pareto(frame, tmp_path / "d.png", "pareto")
    series = {m: {f"s{i}": [(b, 10.0 / b + i, 0.3) for b in (4, 6, 8, 10, 16, 24, 40)]
                  for i in range(6)} for m in ("digits-vp", "digits-rf", "digits-cond-rf")}
    for m in series:
        series[m][None] = (1.9, 1.0)
    assert plots.plot_headline(series, tmp_path / "e.png", "headline", "FID")
    assert len(captured) == 5
    for fig in captured:
        assert _check(fig)
    # the diverged cell is left out and counted in the title
    assert "1 diverged/failed cells left out" in captured[0]._suptitle.get_text()


def test_families_split_into_panels_of_at_most_eight(frame):
    groups = plots.panels(frame[frame["status"] == "ok"])
    assert all(len(labels) <= plots.MAX_SERIES for _, labels in groups)
    names = [n.split(" (")[0] for n, _ in groups]
    assert names[0] == "first order" and "adaptive" in names and "SDE, Brownian path" in names
    assert sum(len(labels) for _, labels in groups) == len(SOLVERS)


def test_html_report_has_every_section_of_the_markdown(tmp_path):
    from samplerbench.bench.cli import main

    out = tmp_path / "run"
    assert main(["run", "--models", "gmm64,gmm2d", "--solvers", "euler,heun,euler_ancestral",
                 "--steps", "4,8", "--samples", "16", "--dtype", "float64", "--out", str(out),
                 "--quiet"]) == 0
    assert main(["report", str(out), "--format", "md,html"]) == 0
    md = (out / "report" / "README.md").read_text()
    page = (out / "report" / "report.html").read_text()
    md_heads = re.findall(r"^#{2,4} (.+)$", md, re.M)
    html_heads = re.findall(r"<h[2-4]>(.*?)</h[2-4]>", page)
    assert len(md_heads) == len(html_heads) > 10
    n_tables = md.count("\n|---")
    assert n_tables == page.count("<table") == page.count("<caption>") > 8
    assert len(re.findall(r"!\[", md)) == page.count("<img ")
    assert math.isclose(page.count("<figcaption>"), page.count("<img "))
