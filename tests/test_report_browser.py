"""The HTML report in a real browser (issue 6): headless Chromium renders report.html, every <img>
loads and decodes, and the screenshot is not blank.  Skipped when no Chromium is installed."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from samplerbench.bench.cli import main

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
BROWSER = next((b for b in map(shutil.which, BROWSERS) if b), None)

pytestmark = pytest.mark.skipif(
    BROWSER is None, reason=f"no Chromium binary on PATH (looked for {', '.join(BROWSERS)}); "
    "install one (Debian: apt-get install chromium) to run the browser test")

PROBE = """<script>window.addEventListener('load', function () {
  var r = Array.from(document.images).map(function (i) {
    return [i.getAttribute('src'), i.complete, i.naturalWidth, i.naturalHeight]; });
  document.title = 'PROBE:' + JSON.stringify(r);
});</script>"""


def _chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [BROWSER, "--headless", "--disable-gpu", "--no-sandbox", "--hide-scrollbars",
           f"--user-data-dir={tmp_path / 'profile'}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180)


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("browser") / "run"
    assert main(["run", "--models", "gmm64", "--solvers", "euler,heun", "--steps", "4,8",
                 "--samples", "8", "--dtype", "float64", "--out", str(out), "--quiet"]) == 0
    assert main(["report", str(out), "--format", "md,html"]) == 0
    return out / "report" / "report.html"


def _decode(src: str, base: Path):
    from PIL import Image

    if src.startswith("data:"):
        data = base64.b64decode(src.split(",", 1)[1])
    else:
        data = (base / src).read_bytes()
    img = Image.open(io.BytesIO(data))
    img.load()                                   # decodes every pixel, raises if corrupt
    return img


def test_every_image_of_the_html_report_loads_and_decodes(report, tmp_path):
    page = report.read_text()
    srcs = re.findall(r'<img[^>]*\ssrc="([^"]+)"', page)
    assert len(srcs) >= 3                        # error vs NFE, non-convergence, Pareto, ...
    # a probe copy of the page: the same images plus one that cannot load (a control showing the
    # probe does tell a broken image from a good one); it reports through document.title
    probe = report.with_name("_probe.html")
    probe.write_text(page.replace("</body>", '<img src="__missing__.png" alt="control">'
                                  + PROBE + "</body>"))
    r = _chromium(tmp_path, "--dump-dom", "--virtual-time-budget=10000", probe.as_uri())
    assert r.returncode == 0, r.stderr[-2000:]
    m = re.search(r"<title>PROBE:(.*?)</title>", r.stdout, re.S)
    assert m, r.stdout[:2000]
    seen = json.loads(m.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    assert [s[0] for s in seen] == srcs + ["__missing__.png"]
    *real, control = seen
    assert control[2] == 0                       # the broken image is detected as broken
    for src, complete, width, height in real:
        assert complete and width > 0 and height > 0, src
        img = _decode(src, report.parent)
        assert img.size == (width, height), src


def test_screenshot_of_the_html_report_is_not_blank(report, tmp_path):
    from PIL import Image

    shot = tmp_path / "report.png"
    r = _chromium(tmp_path, f"--screenshot={shot}", "--window-size=1200,3000", report.as_uri())
    assert r.returncode == 0, r.stderr[-2000:]
    img = Image.open(shot).convert("RGB")
    assert img.size == (1200, 3000)
    colours = img.getcolors(maxcolors=1 << 24)
    assert len(colours) > 50                     # text, tables and anti-aliased plots
    background = max(colours)[1]
    ink = sum(n for n, c in colours if c != background) / (img.width * img.height)
    assert ink > 0.01, f"only {ink:.2%} of the page differs from the background"
    # the plots are drawn: matplotlib's tab20 blue (31, 119, 180) of the first series shows up
    assert any(abs(c[0] - 31) + abs(c[1] - 119) + abs(c[2] - 180) < 30 for _, c in colours)
