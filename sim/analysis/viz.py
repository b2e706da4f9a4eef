"""``valuesim viz SCENARIO``: watch a small scenario run in the browser, through Mesa's SolaraViz.

The page (served by Solara on 127.0.0.1 only) holds the scenario as a :class:`sim.mesa.ValuesimModel` with
SolaraViz's play, step and reset controls, and two views that redraw at every step: the value space (each
agent at its values on the two dimensions that differ most, coloured by group) and the network (agents
coloured by their first value dimension, in a layout fixed when the page is built). Populations above
:data:`MAX_AGENTS` are refused: a browser view of more agents is a blur, and the report's figures serve
large runs.

Needs the ``mesa`` extra (``pip install 'valuesim[mesa]'``: Mesa 3 and Solara).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ..errors import ScenarioError

MAX_AGENTS = 2000
_ENV = "VALUESIM_VIZ"  # how serve() hands the scenario to the Solara app it starts

_APP = """# written by valuesim viz: the Solara app of one scenario
from sim.analysis.viz import page_from_environment

page = page_from_environment()
"""


def serve(scenario: str | Path, *, overrides: Sequence[str] = (), seed: int | None = None, port: int = 8765,
          host: str = "127.0.0.1") -> int:
    """Check the scenario, then serve its SolaraViz page on ``host:port`` until interrupted; the exit code."""
    from ..config.scenario import load_scenario

    spec = load_scenario(Path(scenario), list(overrides)).spec  # bad input is one line, before any server
    if spec.num_agents > MAX_AGENTS:
        raise ScenarioError(f"{scenario}: {spec.num_agents:,} agents is too many to watch (at most {MAX_AGENTS:,}; "
                            f"try --set population.<group>.count=...)")
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise ScenarioError(f"valuesim viz serves on this machine only (127.0.0.1), not {host!r}")
    _require_solara()
    config = {"scenario": str(Path(scenario).resolve()), "overrides": list(overrides), "seed": seed}
    with tempfile.TemporaryDirectory(prefix="valuesim-viz-") as folder:
        app = Path(folder) / "valuesim_viz_app.py"
        app.write_text(_APP)
        # no telemetry and no version check: the page talks to this machine only (solara-assets holds the
        # scripts and fonts Solara would otherwise proxy from a CDN)
        env = {**os.environ, _ENV: json.dumps(config), "SOLARA_TELEMETRY_MIXPANEL_ENABLE": "False"}
        print(f"valuesim viz: http://{host}:{port}/ (Ctrl-C stops it)", file=sys.stderr)
        command = [sys.executable, "-m", "solara", "run", str(app), "--host", host, "--port", str(port),
                   "--production", "--no-open", "--no-check-version"]
        server = subprocess.Popen(command, env=env)
        # SIGTERM (a test, a supervisor) stops the server too, not just this process
        previous = signal.signal(signal.SIGTERM, lambda signum, frame: server.terminate())
        try:
            code = server.wait()
            return 0 if code in (0, -signal.SIGTERM, -signal.SIGINT) else 1
        except KeyboardInterrupt:
            server.terminate()
            server.wait()
            return 0
        finally:
            signal.signal(signal.SIGTERM, previous)


def _require_solara() -> None:
    try:
        import mesa.visualization  # noqa: F401
        import solara  # noqa: F401
    except ImportError:
        raise ScenarioError("valuesim viz needs Mesa 3 and Solara: pip install 'valuesim[mesa]'") from None


def page_from_environment():
    """The SolaraViz page of the scenario that :func:`serve` put in the environment."""
    config = json.loads(os.environ[_ENV])
    return make_page(config["scenario"], overrides=config["overrides"], seed=config["seed"])


def make_page(scenario: str | Path, *, overrides: Sequence[str] = (), seed: int | None = None):
    """A SolaraViz page of the scenario (usable in a notebook too): controls, value space and network."""
    import solara
    from mesa.visualization import SolaraViz
    from mesa.visualization.utils import update_counter

    from .mesa import ValuesimModel

    model = ValuesimModel(str(scenario), seed=seed, overrides=list(overrides))
    layout = _layout(model)
    groups = [g.name for g in model.simulation.world.groups]
    axes = _spread_axes(model)

    @solara.component
    def ValueSpace(model):
        update_counter.get()
        solara.FigureMatplotlib(_value_space_figure(model, axes, groups))

    @solara.component
    def Network(model):
        update_counter.get()
        solara.FigureMatplotlib(_network_figure(model, layout))

    params = {"scenario": str(scenario), "overrides": list(overrides),
              "seed": {"type": "InputText", "value": model.scenario.spec.seed if seed is None else seed,
                       "label": "seed"}}
    return SolaraViz(model, components=[ValueSpace, Network], model_params=params,
                     name=f"valuesim: {model.scenario.name}", play_interval=200)


@dataclass(frozen=True)
class Watched:
    """What a headless browser saw of a live page: whether it got ready, its console, the DOM, a screenshot."""

    ready: bool
    console: list[dict]
    dom: str
    screenshot: Path | None


def watch_page(url: str, ready: str, *, then: Sequence[tuple[str, str]] = (), timeout: float = 60.0,
               screenshot: str | Path | None = None, size: tuple[int, int] = (1400, 1000),
               browser: str | None = None) -> Watched:
    """Load ``url`` in headless Chromium over the DevTools protocol and wait, in real time up to ``timeout``
    seconds, until the JavaScript expression ``ready`` is true (a live page fills in over a websocket, which
    the command line's ``--dump-dom`` does not wait for); then, for each ``(action, ready)`` of ``then``, run
    the JavaScript ``action`` (a click) and wait for its ``ready``; then take the DOM and a screenshot.
    ``ready`` on the result is whether every wait was met in time.

    The console is every ``Runtime.consoleAPICalled`` and ``Runtime.exceptionThrown`` as ``{"level", "text"}``.
    """
    import base64
    import shutil
    import time
    import urllib.request

    from websockets.sync.client import connect

    from .report import find_browser

    browser = browser or find_browser()
    if browser is None:
        raise ScenarioError("no Chromium found (apt-get install chromium, or set VALUESIM_BROWSER)")
    profile = tempfile.mkdtemp(prefix="valuesim-browser-")
    process = subprocess.Popen([browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                                "--disable-extensions", "--disable-background-networking", f"--user-data-dir={profile}",
                                "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
                                f"--window-size={size[0]},{size[1]}", "about:blank"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + timeout
        port_file = Path(profile) / "DevToolsActivePort"
        while not port_file.is_file() or not port_file.read_text().strip():
            if time.monotonic() > deadline or process.poll() is not None:
                raise ScenarioError(f"{browser} did not start its DevTools endpoint")
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as answer:
            target = next(t for t in json.load(answer) if t["type"] == "page")
        with connect(target["webSocketDebuggerUrl"], max_size=None, open_timeout=10) as socket:
            session = _Devtools(socket)
            session.call("Runtime.enable")
            session.call("Page.enable")
            session.call("Page.navigate", url=url)
            ok = session.wait(ready, deadline)
            for action, condition in then:
                if not ok:
                    break
                session.call("Runtime.evaluate", expression=action)
                ok = session.wait(condition, deadline)
            dom = session.call("Runtime.evaluate", expression="document.documentElement.outerHTML",
                               returnByValue=True)["result"]["value"]
            if screenshot is not None:
                png = session.call("Page.captureScreenshot", format="png")["data"]
                Path(screenshot).write_bytes(base64.b64decode(png))
            return Watched(ok, session.console, dom, Path(screenshot) if screenshot is not None else None)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        shutil.rmtree(profile, ignore_errors=True)


class _Devtools:
    """A minimal DevTools-protocol session: numbered calls, console events kept on the side."""

    def __init__(self, socket):
        self.socket, self.next_id, self.console = socket, 0, []

    def wait(self, condition: str, deadline: float) -> bool:
        """Poll the JavaScript ``condition`` until it is true or the (monotonic) deadline passes."""
        import time

        while True:
            got = self.call("Runtime.evaluate", expression=f"Boolean({condition})", returnByValue=True)
            if got.get("result", {}).get("value"):
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.25)

    def call(self, method: str, **params):
        self.next_id += 1
        self.socket.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.recv(timeout=30))
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise ScenarioError(f"DevTools {method}: {message['error']}")
                return message.get("result", {})
            if message.get("method") == "Runtime.consoleAPICalled":
                args = message["params"].get("args", [])
                self.console.append({"level": message["params"]["type"],
                                     "text": " ".join(str(a.get("value", a.get("description", ""))) for a in args)})
            elif message.get("method") == "Runtime.exceptionThrown":
                details = message["params"]["exceptionDetails"]
                self.console.append({"level": "exception", "text": details.get("exception", {}).get(
                    "description", details.get("text", ""))})


def _spread_axes(model) -> tuple[int, int]:
    """The two value dimensions along which the agents differ most at the start."""
    import numpy as np

    order = np.argsort(-model.values.var(axis=0), kind="stable")
    return (int(order[0]), int(order[1] if len(order) > 1 else order[0]))


def _layout(model):
    import networkx as nx
    import numpy as np

    positions = nx.spring_layout(model.network(), seed=int(model.scenario.spec.seed) % 2**32, iterations=30)
    return np.array([positions[i] for i in range(model.simulation.world.n)])


def _value_space_figure(model, axes: tuple[int, int], groups: list[str]):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.2, 3.8), layout="constrained")
    ax = fig.subplots()
    group_of = model.simulation.world.group_index.cpu().numpy()
    x, y = axes
    for g, name in enumerate(groups):
        rows = group_of == g
        ax.scatter(model.values[rows, x], model.values[rows, y], s=10, label=name, alpha=0.8, edgecolors="none")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel(model.dimensions[x])
    ax.set_ylabel(model.dimensions[y])
    ax.set_title(f"value space, step {model.step_count}")
    ax.legend(fontsize="small", loc="upper right")
    return fig


def _network_figure(model, layout):
    from matplotlib.collections import LineCollection
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.2, 3.8), layout="constrained")
    ax = fig.subplots()
    edges = model.network().edges()
    lines = [[layout[a], layout[b]] for a, b in edges]
    ax.add_collection(LineCollection(lines, colors="grey", linewidths=0.3, alpha=min(0.3, 150 / max(len(lines), 1))))
    points = ax.scatter(layout[:, 0], layout[:, 1], c=model.values[:, 0], cmap="coolwarm", vmin=0, vmax=1, s=12,
                        edgecolors="none")
    fig.colorbar(points, ax=ax, label=model.dimensions[0])
    ax.set_axis_off()
    ax.set_title(f"network, step {model.step_count}")
    return fig
