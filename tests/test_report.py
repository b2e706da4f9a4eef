"""``valuesim report``: one self-contained HTML file, opened in a real headless Chromium.

The runs are made here: a small influence run of three worlds, an advice trial and a delegation run (the
decision tables), and a Shapley run (the bars). The browser test loads the file from disk with the network
unreachable to it by construction (nothing in it names a URL), reads the console, the DOM after the page's
own check of its figures, and a screenshot. ``VALUESIM_SCREENSHOT`` names a file to keep the screenshot in.
"""

from __future__ import annotations

import base64
import io
import os
import re
import shutil

import numpy as np
import pytest
import yaml

import sim
from sim.analysis import plots
from sim.analysis.report import SECTIONS, browse, find_browser
from sim.cli import main
from tests.conftest import REPO, small_scenario


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Run directories made for this module: influence (3 worlds), advice, delegation, Shapley."""
    base = tmp_path_factory.mktemp("report_runs")
    scenario = base / "small.yaml"
    scenario.write_text(yaml.safe_dump(small_scenario(metrics=["mean_values", "drift", "polarization", "clusters"])))
    made = {"influence": sim.run(scenario, worlds=3, runs_dir=base, out=base / "influence"),
            "advice": sim.run(REPO / "scenarios/manipulation_trial.yaml", runs_dir=base, out=base / "advice"),
            "delegation": sim.run(REPO / "scenarios/principal_agent_shopping.yaml", runs_dir=base,
                                  overrides=["steps=4"], out=base / "delegation")}
    code = main(["shapley", str(REPO / "scenarios/shapley_influencers.yaml"), "--players",
                 "broadcasters,nudgers,contrarians,idle", "--metric", "drift_dimension:people:traditional_secular",
                 "--set", "steps=6", "--runs-dir", str(base), "--out", str(base / "shapley"), "--quiet"])
    assert code == 0
    made["shapley"] = base / "shapley"
    return made


@pytest.fixture(scope="module")
def html_report(runs, tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / "report.html"
    assert main(["report", *(str(p) for p in runs.values()), "-o", str(out)]) == 0
    return out


def _images(text: str) -> list[str]:
    return re.findall(r'<img class="plot"[^>]*src="data:image/png;base64,([^"]+)"', text)


def test_report_is_self_contained_with_every_section(runs, html_report):
    text = html_report.read_text()
    # nothing to fetch: no URL anywhere a browser would load one from
    assert not re.search(r'(src|href)\s*=\s*"(?!data:)', text)
    assert "<link" not in text and "@import" not in text and "url(" not in text
    assert not re.search(r"https?://", text)
    for section in SECTIONS:
        if section.key != "sweep":  # no sweep among these runs
            assert f'id="{section.key}"' in text, section.key
    # one figure per section and run that has it: influence 5 (no Shapley), advice and delegation 2 each
    # (distribution and network; their scenarios log no mean_values), Shapley 1
    assert len(_images(text)) == 5 + 2 + 2 + 1
    for png in _images(text):
        from PIL import Image

        image = np.asarray(Image.open(io.BytesIO(base64.b64decode(png))).convert("L"))
        assert image.shape[0] > 100 and image.shape[1] > 100
        assert (image < 200).mean() > 0.005  # ink, not a blank canvas
    assert text.count("<figcaption>") == len(_images(text)) + 2  # the two decision tables have captions too
    assert text.count('class="absent">not in this run') > 0


def test_decision_tables_hold_the_final_readings(runs, html_report):
    text = html_report.read_text()
    for name, reading in (("advice", "advice.harmful_choice"), ("delegation", "delegation.override")):
        metrics = sim.open_run(runs[name]).metrics()
        final = metrics[(metrics["metric"] == reading) & (metrics["step"] == metrics["step"].max())]
        row = final.iloc[0]
        low = metrics[(metrics["metric"] == reading + ".low") & (metrics["step"] == row["step"])
                      & (metrics["group"] == row["group"]) & (metrics["world"] == row["world"])]["value"].iloc[0]
        cell = f"{row['value']:.4g} [{low:.4g}, "
        assert f"<th>{reading}</th><td>{row['group']}</td><td>{cell}" in text


def test_network_snapshot_samples_a_large_population(runs):
    run = sim.open_run(runs["influence"])
    whole = plots.network_snapshot(run)
    assert "all 180 logged agents" in whole.valuesim_caption
    sample = plots.network_snapshot(run, limit=50)
    assert "a seeded sample of 50 of its 180" in sample.valuesim_caption
    drawn = [c for c in sample.axes[0].collections if c.get_offsets().shape[0] > 1]
    assert drawn[-1].get_offsets().shape[0] == 50
    again = plots.network_snapshot(run, limit=50)
    assert np.array_equal(again.axes[0].collections[-1].get_offsets(), sample.axes[0].collections[-1].get_offsets())


def test_report_bad_input(tmp_path, capsys):
    assert main(["report", str(tmp_path / "missing"), "-o", str(tmp_path / "r.html")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a run directory" in err[0]
    assert not (tmp_path / "r.html").exists()


def _browser():
    browser = find_browser()
    if browser is None:
        pytest.skip("no Chromium on this machine (make test installs Debian's chromium when it runs as root)")
    return browser


def _inks(dom: str) -> list[float]:
    return [float(x) for x in re.findall(r'<img class="plot[^"]*"[^>]*data-ink="([0-9.]+)"', dom)]


def test_report_in_a_headless_browser(html_report, tmp_path):
    _browser()
    shot = tmp_path / "report.png"
    seen = browse(html_report.resolve().as_uri(), screenshot=shot, size=(1600, 3200))
    assert seen.console == []  # no errors, no warnings: the page logs nothing at all
    figures = len(_images(html_report.read_text()))
    body = re.search(r"<body([^>]*)>", seen.dom).group(1)
    assert f'data-figures="{figures}"' in body and f'data-figures-ok="{figures}"' in body
    inks = _inks(seen.dom)
    assert len(inks) == figures and min(inks) > 0.01
    for section in ("trajectories", "drift", "polarization", "distribution", "network", "shapley", "decisions"):
        assert f'data-section="{section}"' in seen.dom
    from PIL import Image

    screen = np.asarray(Image.open(shot).convert("L"), dtype=np.float64)
    assert screen.shape == (3200, 1600)
    assert screen.std() > 10 and (screen < 128).mean() > 0.01  # plots and text drawn, not a white page
    if os.environ.get("VALUESIM_SCREENSHOT"):
        shutil.copyfile(shot, os.environ["VALUESIM_SCREENSHOT"])


def test_the_browser_check_sees_a_broken_page(html_report, tmp_path):
    """The same checks fail on a report whose figure does not decode and whose page throws."""
    _browser()
    text = html_report.read_text()
    first = _images(text)[0]
    broken = text.replace(first, base64.b64encode(b"not a png at all").decode(), 1)
    broken = broken.replace("</body>", "<script>undefinedFunction();</script></body>")
    page = tmp_path / "broken.html"
    page.write_text(broken)
    seen = browse(page.as_uri())
    assert any("undefinedFunction" in line for line in seen.console)
    inks = _inks(seen.dom)
    assert inks[0] == 0 and min(inks[1:]) > 0.01
    assert "this figure did not load" in seen.dom
