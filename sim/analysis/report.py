"""``valuesim report``: one self-contained HTML file of plots and tables for one or more run directories.

The file needs nothing but a browser: every figure is an inline PNG (``data:`` URL), the style sheet and
the one small script are inline, and no font, script or image is fetched. Several runs are laid side by
side, one column per run, one row per section; a section a run does not have says so in its cell.

The figures are those of :mod:`sim.analysis.plots` (one function per figure, taking a
:class:`~sim.runs.reading.RunView` and returning a matplotlib ``Figure``), so a notebook and the report
show the same pictures. Each section below names its figure function, when it applies and its caption.

The inline script checks, once the page has loaded, that every figure decoded and has ink on it; a figure
that did not is marked in the page (and ``data-ink`` on each image says what share of its pixels is not
background, which the browser test reads).
"""

from __future__ import annotations

import base64
import html
import io
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from ..errors import RunDirError
from ..runs.reading import RunView, open_run
from .summary import DELEGATION_CLUSTERED, DELEGATION_INTERVALS

# Readings written by the decision metrics (advice_trial, delegation_trial), found by the catalogue and,
# for runs without one, by the prefixes of their names.
DECISION_METRICS = ("advice_trial", "delegation_trial")
DECISION_PREFIXES = ("advice.", "delegation.", "advice_trial.", "delegation_trial.")
POLARIZATION_READINGS = ("pairwise_distance", "variance", "clusters", "largest_cluster")


@dataclass(frozen=True)
class Section:
    """One row of the report: a figure function of :mod:`sim.analysis.plots` (or a table maker)."""

    key: str
    title: str
    applies: Callable[[RunView], bool]
    caption: Callable[[RunView], str]
    figure: str | None = None  # the name of the plots function; None: ``table`` makes HTML instead
    table: Callable[[RunView], str] | None = None


def _readings(run: RunView) -> set[str]:
    """The reading names in the run's metrics table (empty for a run without one, such as a Shapley run)."""
    try:
        return set(run.metrics("arrow").column("metric").unique().to_pylist())
    except RunDirError:
        return set()


def _has_table(run: RunView, name: str) -> bool:
    return (run.path / f"{name}.parquet").is_file() or any((run.path / "parts").glob(f"{name}-*.parquet"))


def _worlds(run: RunView) -> str:
    worlds = run.manifest.get("worlds") or 1
    return ("one world, so no band" if worlds == 1 else
            f"line: mean over the {worlds} worlds, band: their minimum to maximum")


SECTIONS: tuple[Section, ...] = (
    Section("trajectories", "Value trajectories", lambda r: "mean_values" in _readings(r),
            lambda r: f"The mean of each value dimension (one panel each) per group, step by step; {_worlds(r)}.",
            figure="trajectories"),
    Section("drift", "Drift by group and dimension", lambda r: "drift_dimension" in _readings(r),
            lambda r: "The mean signed change of each value dimension (columns) per group (rows) from step 0 to "
                      "the last logged step, averaged over worlds: red rose, blue fell.",
            figure="drift_heatmap"),
    Section("polarization", "Polarisation and clusters",
            lambda r: bool(_readings(r) & set(POLARIZATION_READINGS)),
            lambda r: "Polarisation (mean pairwise distance, variance) and opinion clusters (how many, the share in "
                      f"the largest) per group over time; {_worlds(r)}.",
            figure="polarization"),
    Section("distribution", "Value distribution over time", lambda r: _has_table(r, "values"),
            lambda r: "For each value dimension, the density of the logged agents' values (vertical, 0 to 1) at "
                      "each snapshot step (horizontal), pooled over worlds: bright is dense.",
            figure="value_distribution"),
    Section("network", "Network snapshot", lambda r: _has_table(r, "values") and _has_table(r, "network"),
            lambda r: "The influence network of one world at the last snapshot, agents coloured by their values "
                      "(a seeded sample of a large population).",
            figure="network_snapshot"),
    Section("shapley", "Shapley contributions", lambda r: (r.path / "shapley.parquet").is_file(),
            lambda r: "Each player's Shapley value for the outcome metric, with its 95% interval (error bars: "
                      "1.96 standard errors over sampled coalitions and replicates).",
            figure="shapley_bars"),
    Section("sweep", "Phase diagram", lambda r: (r.path / "sweep.parquet").is_file(),
            lambda r: "The sweep's outcome against its grid keys, with 95% intervals over seeds.",
            figure="sweep_phase"),
    Section("decisions", "Decision metrics", lambda r: bool(_decision_readings(r)),
            lambda r: "The decision metrics at the last logged step, per world, group and reading; brackets hold "
                      "the metric's own 95% interval where it writes one (.low/.high).",
            table=lambda r: _decision_table(r)),
)


def report(run_dirs: Sequence[str | Path], out: str | Path, *, title: str | None = None,
           figures: Any = None) -> Path:
    """Write the HTML report of ``run_dirs`` (one column each) to ``out`` and return its path.

    ``figures`` is where the figure functions are looked up by name (default :mod:`sim.analysis.plots`).
    A folder that is not a run directory raises :class:`~sim.errors.RunDirError` before anything is written.
    """
    if not run_dirs:
        raise RunDirError("say which run directories to report on")
    runs = [open_run(path) for path in run_dirs]
    if figures is None:
        from . import plots as figures
    document = render(runs, figures, title=title)
    return _write(Path(out), document)


def render(runs: Sequence[RunView], figures: Any, *, title: str | None = None) -> str:
    """The report of ``runs`` as one HTML string."""
    title = title or "valuesim report: " + ", ".join(r.path.name for r in runs)
    rows = [_header_row(runs)]
    for section in SECTIONS:
        present = [section.applies(run) for run in runs]
        if not any(present):
            continue
        cells = [_cell(section, run, figures) if ok else f'<div class="absent">not in this run</div>'
                 for run, ok in zip(runs, present)]
        rows.append(f'<section id="{section.key}"><h2>{html.escape(section.title)}</h2>'
                    f'<div class="row" style="grid-template-columns: repeat({len(runs)}, minmax(0, 1fr))">'
                    + "".join(f'<div class="cell">{c}</div>' for c in cells) + "</div></section>")
    return _PAGE.format(title=html.escape(title), style=_STYLE, script=_SCRIPT, body="\n".join(rows))


def _header_row(runs: Sequence[RunView]) -> str:
    cells = []
    for run in runs:
        m = run.manifest
        facts = [("scenario", m.get("scenario")), ("status", run.status), ("seed", m.get("seed")),
                 ("worlds", m.get("worlds")), ("agents", m.get("agents")),
                 ("steps", m.get("last_step", m.get("steps"))),
                 ("values", (m.get("value_space") or {}).get("name")), ("kind", m.get("kind"))]
        items = "".join(f"<dt>{k}</dt><dd>{html.escape(str(v))}</dd>" for k, v in facts if v is not None)
        cells.append(f'<div class="cell"><h3>{html.escape(run.path.name)}</h3><dl>{items}</dl></div>')
    return (f'<section id="runs"><h2>Runs</h2><div class="row" '
            f'style="grid-template-columns: repeat({len(runs)}, minmax(0, 1fr))">{"".join(cells)}</div></section>')


def _cell(section: Section, run: RunView, figures: Any) -> str:
    if section.table is not None:
        return f'<figure class="table" data-section="{section.key}"><div class="scroll">{section.table(run)}</div>' \
               f"<figcaption>{html.escape(section.caption(run))}</figcaption></figure>"
    figure = getattr(figures, section.figure)(run)
    # the figure's own caption (it knows the numbers it drew) when it has one
    caption = html.escape(getattr(figure, "valuesim_caption", None) or section.caption(run))
    png = _png(figure)
    alt = html.escape(f"{section.title} of {run.path.name}")
    return (f'<figure data-section="{section.key}"><img class="plot" alt="{alt}" '
            f'src="data:image/png;base64,{png}"><figcaption>{caption}</figcaption></figure>')


def _png(figure) -> str:
    """A matplotlib Figure as base64 PNG text."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=96)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _decision_readings(run: RunView) -> list[str]:
    catalogue = run.metric_catalogue
    names = sorted(_readings(run))
    return [n for n in names if catalogue.get(n, {}).get("metric") in DECISION_METRICS
            or n.startswith(DECISION_PREFIXES)]


def _decision_table(run: RunView) -> str:
    names = _decision_readings(run)
    metrics = run.metrics()
    rows = metrics[metrics["metric"].isin(names)]
    rows = rows[rows["step"] == rows["step"].max()]
    bounds = {n.rsplit(".", 1)[0] for n in names if n.endswith((".low", ".high"))}
    if DELEGATION_CLUSTERED not in names:  # delegation intervals logged over purchases: too narrow to show
        bounds -= set(DELEGATION_INTERVALS)
    base = [n for n in names if not n.endswith((".low", ".high"))]
    worlds = sorted(rows["world"].unique())
    lookup = {(r.metric, r.group, r.world): r.value for r in rows.itertuples()}
    head = "".join(f"<th>world {w}</th>" for w in worlds)
    body = []
    for name in base:
        groups = list(dict.fromkeys(rows.loc[rows["metric"] == name, "group"]))
        for group in groups:
            cells = []
            for w in worlds:
                text = _number(lookup.get((name, group, w)))
                if name in bounds:
                    text += (f" [{_number(lookup.get((name + '.low', group, w)))}, "
                             f"{_number(lookup.get((name + '.high', group, w)))}]")
                cells.append(f"<td>{text}</td>")
            body.append(f"<tr><th>{html.escape(name)}</th><td>{html.escape(str(group))}</td>{''.join(cells)}</tr>")
    return (f"<table><thead><tr><th>reading</th><th>group</th>{head}</tr></thead>"
            f"<tbody>{''.join(body)}</tbody></table>")


def _number(value) -> str:
    if value is None or value != value:  # missing, or NaN (not reached yet)
        return "–"
    return f"{value:.4g}"


def _write(out: Path, document: str) -> Path:
    """Write atomically: a reader never sees half a report."""
    out.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            file.write(document)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)  # mkstemp makes it private; a report is a document to share
        os.replace(temporary, out)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return out


def find_browser() -> str | None:
    """The path of a Chromium (or Chrome) executable on this machine, or None (``VALUESIM_BROWSER`` wins)."""
    import shutil

    for name in (os.environ.get("VALUESIM_BROWSER"), "chromium", "chromium-browser", "google-chrome"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


@dataclass(frozen=True)
class Browsed:
    """What a headless browser saw of a page: the DOM after its scripts ran, and what it wrote to the console."""

    dom: str
    console: list[str]
    screenshot: Path | None


def browse(url: str, *, screenshot: str | Path | None = None, size: tuple[int, int] = (1400, 2400),
           wait_ms: int = 5000, timeout: float = 120.0, browser: str | None = None) -> Browsed:
    """Load ``url`` in headless Chromium (its command line: ``--dump-dom``, ``--screenshot``, console messages
    from ``--enable-logging=stderr``) and return the DOM, the console lines and the screenshot's path.

    ``wait_ms`` is virtual time the page gets to run its scripts before the DOM is taken.
    """
    import subprocess

    browser = browser or find_browser()
    if browser is None:
        raise RunDirError("no Chromium found (apt-get install chromium, or set VALUESIM_BROWSER)")
    with tempfile.TemporaryDirectory(prefix="valuesim-browser-") as profile:
        command = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                   "--disable-extensions", "--disable-background-networking", f"--user-data-dir={profile}",
                   "--enable-logging=stderr", "--v=0", f"--virtual-time-budget={wait_ms}",
                   f"--window-size={size[0]},{size[1]}", "--dump-dom"]
        if screenshot is not None:
            command.append(f"--screenshot={Path(screenshot).resolve()}")
        done = subprocess.run([*command, url], capture_output=True, text=True, timeout=timeout)
    console = [line for line in done.stderr.splitlines() if ":CONSOLE" in line]
    if done.returncode != 0 and not done.stdout:
        raise RunDirError(f"{browser} exited {done.returncode}: {done.stderr.strip()[-300:]}")
    return Browsed(done.stdout, console, Path(screenshot) if screenshot is not None else None)


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; border-bottom: 1px solid #ccc; padding-bottom: .2em; }
h3 { font-size: 1em; margin: .2em 0; word-break: break-all; }
.row { display: grid; gap: 1em; }
.cell { min-width: 0; }
figure { margin: 0; }
.scroll { overflow-x: auto; max-width: 100%; }
img.plot { max-width: 100%; height: auto; display: block; border: 1px solid #eee; }
img.plot.broken { outline: 3px solid #c00; }
figcaption { font-size: .85em; color: #555; margin-top: .3em; }
.absent, .broken-note { color: #888; font-style: italic; }
.broken-note { color: #c00; }
dl { display: grid; grid-template-columns: max-content auto; gap: .1em 1em; font-size: .9em; margin: 0; }
dt { color: #666; } dd { margin: 0; }
table { border-collapse: collapse; font-size: .8em; }
th, td { border: 1px solid #ddd; padding: .15em .5em; text-align: left; white-space: nowrap; }
thead th { background: #f4f4f4; }
"""

# Marks every figure with the share of its pixels that are not background; one that did not decode or is
# blank is outlined and says so. It logs nothing: a console message in the browser test is a bug.
_SCRIPT = """
window.addEventListener("load", function () {
  var images = document.querySelectorAll("img.plot");
  var ok = 0;
  images.forEach(function (img) {
    var ink = 0;
    if (img.complete && img.naturalWidth > 0) {
      var canvas = document.createElement("canvas");
      canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
      var context = canvas.getContext("2d");
      context.drawImage(img, 0, 0);
      var data = context.getImageData(0, 0, canvas.width, canvas.height).data;
      var inked = 0;
      for (var i = 0; i < data.length; i += 4) {
        if (data[i + 3] > 0 && (data[i] < 240 || data[i + 1] < 240 || data[i + 2] < 240)) inked++;
      }
      ink = inked / (data.length / 4);
    }
    img.dataset.width = img.naturalWidth;
    img.dataset.ink = ink.toFixed(4);
    if (ink > 0) { ok++; } else {
      img.classList.add("broken");
      var note = document.createElement("p");
      note.className = "broken-note"; note.textContent = "this figure did not load";
      img.after(note);
    }
  });
  document.body.dataset.figures = images.length;
  document.body.dataset.figuresOk = ok;
});
"""

_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>{style}</style></head>
<body><h1>{title}</h1>
{body}
<script>{script}</script>
</body></html>
"""
