"""The ``valuesim`` command. The only module that knows about the terminal.

It imports the engine (torch, pyarrow) only inside the commands that need it, so ``valuesim --help`` and
argument errors answer at once.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

EXAMPLES = """\
examples:
  valuesim run scenarios/quickstart.yaml
  valuesim run scenarios/quickstart.yaml --seed 7 --worlds 8 --set steps=50 --set population.citizens.count=2000
  valuesim validate scenarios/quickstart.yaml
  valuesim run scenarios/quickstart.yaml --tag pilot   # runs/quickstart__<UTC time>__s42__pilot
  valuesim runs --json
  valuesim resume runs/quickstart__20261125T120000Z__s42
  valuesim new plugin policy my_policy --dir ~/code
  valuesim shapley scenarios/shapley_influencers.yaml --players broadcasters,nudgers,contrarians,idle --metric drift_dimension:people:traditional_secular
  valuesim train scenarios/train_influencer.yaml --timesteps 20000 --worlds 16
  valuesim report runs/quickstart__20261125T120000Z__s42 -o report.html
  valuesim viz scenarios/deffuant_clusters.yaml --set population.people.count=200
  valuesim analyze runs/quickstart__20261125T120000Z__s42 --json
  valuesim sweep scenarios/deffuant_clusters.yaml --grid population.people.confidence=0.05:0.5:10 --seeds 4

exit codes: 0 success, 1 the run failed or was interrupted, 2 bad input
"""


class _Parser(argparse.ArgumentParser):
    """argparse, with a bad flag value told in one line (``--seed must be ...``) instead of the usage block."""

    def error(self, message: str):
        if message.startswith("argument "):
            flag, _, why = message.removeprefix("argument ").partition(": ")
            flag = flag.split("/")[-1]  # '-s/--seed' -> '--seed'
            self.exit(2, f"valuesim: error: {flag} {why}\n" if why.startswith("must ") else
                      f"valuesim: error: {flag}: {why}\n")
        super().error(message)


def _integer(flag: str, minimum: int, maximum: int | None = None, top: str = ""):
    """An argparse type: an integer of at most 20 digits in [minimum, maximum], or one line naming the flag."""

    def parse(text: str) -> int:
        digits = text.strip().lstrip("+-")
        if not digits.isdigit() or len(digits) > 20:
            what = f"a number of {len(digits):,} digits" if digits.isdigit() else repr(text)
            accepted = f"an integer >= {minimum}" + (f" and at most {top}" if top else "")
            raise argparse.ArgumentTypeError(f"must be {accepted}, got {what}")
        value = int(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        if maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError(f"must be at most {top}, got {value}")
        return value

    parse.__name__ = flag  # what argparse names in its own messages
    return parse


SEED = _integer("seed", 0, 2**64 - 1, "2**64 - 1")
WORLDS = _integer("worlds", 1)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="valuesim", description="Simulate how human and AI values change together.",
                                epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="store_true", help="print the version and exit")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    r = sub.add_parser("run", help="run a scenario and write a run log", epilog=EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    r.add_argument("scenario", help="scenario YAML file")
    r.add_argument("--seed", type=SEED, help="override the scenario's seed")
    r.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a scenario field by dotted path (repeatable), e.g. --set steps=50")
    r.add_argument("--plugins", dest="plugin_dirs", action="append", default=[], metavar="DIR",
                   help="load every .py file in DIR as a drop-in plugin file (repeatable)")
    r.add_argument("--worlds", type=WORLDS, help="number of parallel worlds B (replicates)")
    r.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    r.add_argument("--out", help="run directory to write (default: runs/<scenario>__<UTC time>__s<seed>)")
    r.add_argument("--runs-dir", default="runs", help="where run directories go (default: runs)")
    r.add_argument("--tag", help="a label for the run, kept in its manifest and ending its directory's name")
    r.add_argument("--llm-cache", default="readwrite", choices=("off", "read", "readwrite"),
                   help="the LLM response cache (default readwrite: replay what is cached, store the rest)")
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    r.add_argument("--json", action="store_true", help="print a JSON summary on stdout")

    v = sub.add_parser("validate", help="check a scenario without running it")
    v.add_argument("scenario")
    v.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    v.add_argument("--plugins", dest="plugin_dirs", action="append", default=[], metavar="DIR")
    v.add_argument("--json", action="store_true", help="print the resolved scenario as JSON")

    pl = sub.add_parser("plugins", help="list the installed plugins, or show one")
    pl_sub = pl.add_subparsers(dest="plugins_command", metavar="{list,show}")
    ls = pl_sub.add_parser("list", help="list plugins by kind")
    ls.add_argument("--kind", help="only this kind (dynamics, networks, metrics, policies, ...)")
    ls.add_argument("--json", action="store_true")
    ls.add_argument("--plugins", dest="plugin_dirs", action="append", default=[], metavar="DIR",
                    help="also list the drop-in plugin files in DIR")
    sh = pl_sub.add_parser("show", help="a plugin's documentation, parameters and origin")
    sh.add_argument("name")
    sh.add_argument("--kind", help="the kind, when two kinds share the name")
    sh.add_argument("--json", action="store_true")
    sh.add_argument("--plugins", dest="plugin_dirs", action="append", default=[], metavar="DIR")

    nw = sub.add_parser("new", help="create a plugin package to edit (valuesim new plugin KIND NAME)")
    nw_sub = nw.add_subparsers(dest="new_command", metavar="plugin")
    npl = nw_sub.add_parser("plugin", help="an installable plugin package: a working example, its tests, a README",
                            epilog="example:\n  valuesim new plugin policy my_policy   # writes ./valuesim-my-policy/",
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    npl.add_argument("kind", help="policy, dynamics, metric, network or protocol")
    npl.add_argument("name", help="the plugin's name in scenarios, a Python identifier (e.g. my_policy)")
    npl.add_argument("--dir", default=".", help="where to create valuesim-<name>/ (default: the current directory)")

    rs = sub.add_parser("runs", help="list the runs in a folder of runs: scenario, status, seed, worlds, steps, "
                                     "overrides, start time")
    rs.add_argument("--runs-dir", default="runs", help="the folder of runs (default: runs)")
    rs.add_argument("--json", action="store_true", help="print the list as JSON")

    t = sub.add_parser("train", help="train a scenario's rl agents (one shared policy) and save the policy",
                       epilog="examples:\n  valuesim train scenarios/train_influencer.yaml --timesteps 20000 --worlds 16\n"
                              "  valuesim train --resume runs/train_influencer__20261125T120000Z__s7__train\n"
                              "then: policy: {trained: {path: runs/<run>/policy.zip}} in a scenario",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    t.add_argument("scenario", nargs="?", help="scenario YAML file with at least one group of kind rl")
    t.add_argument("--backend", default="sb3", help="sb3 (stable-baselines3) or torchrl (TorchRL's PPO, tensors on "
                                                    "the device), both the rl extra; rllib (RLlib's PPO on a local "
                                                    "Ray instance, or RAY_ADDRESS; the ray extra)")
    t.add_argument("--algo", default="ppo", help="the backend's algorithm (default: ppo)")
    t.add_argument("--timesteps", type=int, default=50_000, help="agent-steps to train for (default: 50000)")
    t.add_argument("--worlds", type=int, help="worlds B stepped together (default: the scenario's worlds)")
    t.add_argument("--device", default="auto", help="where the worlds live: auto, cpu or cuda (default: auto)")
    t.add_argument("--seed", type=int, help="override the scenario's seed (the worlds' and the learner's)")
    t.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a scenario field by dotted path (repeatable)")
    t.add_argument("--param", dest="algo_params", action="append", default=[], metavar="KEY=VALUE",
                   help="an algorithm parameter, e.g. --param learning_rate=0.001 --param n_steps=32 (repeatable)")
    t.add_argument("--eval-every", type=int, help="agent-steps between evaluations (default: a tenth of the run)")
    t.add_argument("--checkpoint-every", type=int, help="agent-steps between checkpoints (default: a tenth)")
    t.add_argument("--out", help="run directory (default: runs/<scenario>__<UTC time>__s<seed>__train)")
    t.add_argument("--runs-dir", default="runs", help="where run directories go (default: runs)")
    t.add_argument("--resume", metavar="RUN_DIR", help="go on with an interrupted training run")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.add_argument("--json", action="store_true", help="print a JSON summary on stdout")

    sh_ = sub.add_parser("shapley", help="Shapley values: which groups or agents caused an outcome",
                         epilog="examples:\n  valuesim shapley scenarios/shapley_influencers.yaml "
                                "--players broadcasters,nudgers,contrarians,idle \\\n"
                                "      --metric drift_dimension:people:traditional_secular\n"
                                "  valuesim shapley runs/<run> --players groups --metric variance:all --null noop\n"
                                "  valuesim shapley S.yaml --players hubs=degree:top:5,keen=value:security>0.7 "
                                "--metric mean_values:all:security --windows 4",
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    sh_.add_argument("source", help="scenario YAML file or run directory")
    sh_.add_argument("--players", default="groups",
                     help="groups, agents, or NAME=SELECTOR,... (group:G, index:A:B, value:DIM>X, degree:top:K; @G "
                          "keeps group G's agents; a bare group name is that group) (default: groups)")
    sh_.add_argument("--metric", required=True, help="METRIC[:GROUP[:DIMENSION]], e.g. mean_values:people:security")
    sh_.add_argument("--at", default="final", help="final, mean (over the run log's steps) or a step (default: final)")
    sh_.add_argument("--windows", type=int, help="Shapley values of the change within each of W windows")
    sh_.add_argument("--null", default="absent", help="absent, noop, baseline or baseline:POLICY (default: absent)")
    sh_.add_argument("--method", default="auto",
                     help="auto, exact, permutation, tmc, kernel, banzhaf or loo (default auto: exact up to 14 players)")
    sh_.add_argument("--se", type=float, help="stop once every standard error is at most this")
    sh_.add_argument("--budget", type=int, help="most evaluations (worlds: coalitions x replicates)")
    sh_.add_argument("--replicates", type=int, default=8, help="replicates R per coalition, streams 0..R-1 (default 8)")
    sh_.add_argument("--batch", type=int, help="most worlds per batch (default: by the size of a world)")
    sh_.add_argument("--executor", default="local", choices=("local", "ray"),
                     help="local, or ray (the ray extra; RAY_ADDRESS for a cluster)")
    sh_.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    sh_.add_argument("--seed", type=int, help="override the scenario's seed")
    sh_.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a scenario field by dotted path (repeatable)")
    sh_.add_argument("--out", help="run directory (default: runs/<scenario>__<UTC time>__s<seed>__shapley)")
    sh_.add_argument("--runs-dir", default="runs", help="where run directories go (default: runs)")
    sh_.add_argument("--quiet", action="store_true", help="no progress")
    sh_.add_argument("--json", action="store_true", help="print the table and diagnostics as JSON")

    s = sub.add_parser("resume", help="finish an interrupted run from its checkpoint")
    s.add_argument("run_dir")
    s.add_argument("--device", default=None, help="device to resume on (default: the run's)")
    s.add_argument("--quiet", action="store_true")
    s.add_argument("--json", action="store_true")
    _calibrate_parser(sub)
    _report_parsers(sub)
    _analysis_parsers(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    try:
        code = _main(argv)
        sys.stdout.flush()  # a reader that went away (`| head`) shows here, not at interpreter exit
        return code
    except BrokenPipeError:
        # the reader of our output went away: stop quietly, and keep the interpreter's own last flush quiet too
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0


def _main(argv: list[str] | None = None) -> int:
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # --help, or a bad flag argparse has already told about: the code, not an exit
        return exc.code if isinstance(exc.code, int) else 2
    if args.version:
        from . import __version__

        print(__version__)
        return 0
    if args.command is None:
        _parser().print_help(sys.stderr)
        return 2
    from .errors import RunFailed, ValuesimError

    try:
        return {"run": _run, "validate": _validate, "resume": _resume, "plugins": _plugins,
                "new": _new, "runs": _runs, "calibrate": _calibrate, "train": _train, "shapley": _shapley,
                "report": _report_html, "viz": _viz,
                "analyze": _analyze, "compare": _compare, "sweep": _sweep}[args.command](args)
    except (ValuesimError, RunFailed) as exc:
        print(f"valuesim: error: {exc}", file=sys.stderr)
        return exc.exit_code


def _validate(args) -> int:
    from .config.build import build_simulation
    from .core.engine import StepError
    from .config.scenario import load_scenario

    scenario = load_scenario(args.scenario, args.overrides, args.plugin_dirs)
    # builds the network, population and plugins too (files, sizes, profiles, backends), calling no model
    simulation = build_simulation(scenario, worlds=1, measure=False)
    try:  # and reads step 0's metrics: one that cannot read this world (it disagrees with a protocol) says so now
        simulation.observe()
    except StepError as exc:
        if exc.where is None:
            raise
        field, index = exc.where
        raise scenario.error(f"{field}[{index}]", str(exc).removeprefix("step 0: ")) from None
    if args.json:
        print(json.dumps(scenario.to_dict(), indent=2))
    else:
        spec = scenario.spec
        print(f"{args.scenario}: ok ({_count(spec.num_agents, 'agent')}, {_count(len(spec.population), 'group')}, "
              f"{_count(spec.steps, 'step')})")
    return 0


def _count(number: int, word: str) -> str:
    """``1 group``, ``2 groups``, ``10,000 agents``."""
    return f"{number:,} {word}{'' if number == 1 else 's'}"


def _new(args) -> int:
    from .errors import ValuesimError
    from .plugin.scaffold import scaffold_plugin

    if getattr(args, "new_command", None) != "plugin":
        raise ValuesimError("say what to create: valuesim new plugin KIND NAME [--dir DIR]")
    path = scaffold_plugin(args.kind, args.name, Path(args.dir))
    print(path)
    print(f"next: cd {path} && pip install -e . && pytest", file=sys.stderr)
    return 0


def _plugins(args) -> int:
    from . import registry
    from .plugin import info as plugin_info
    from .config.scenario import plugin_files

    for folder in getattr(args, "plugin_dirs", []):
        registry.load_files(plugin_files(folder))
    if getattr(args, "plugins_command", None) == "show":
        info = plugin_info.describe(args.name, args.kind)
        print(json.dumps(info, indent=2) if args.json else plugin_info.render(info))
        return 0
    rows = plugin_info.listing(getattr(args, "kind", None))  # bare `valuesim plugins` lists everything
    for row in rows:
        if row["error"]:
            print(f"valuesim: warning: {row['error']}", file=sys.stderr)
    if getattr(args, "json", False):
        print(json.dumps(rows, indent=2))
        return 0
    for row in rows:
        print(plugin_info.list_line(row))
    return 0


def _run(args) -> int:
    from .runs.runner import Interrupted, run

    with _progress(args.quiet) as progress:
        try:
            path = run(args.scenario, seed=args.seed, worlds=args.worlds, device=args.device, out=args.out,
                       runs_dir=args.runs_dir, overrides=args.overrides, plugin_dirs=args.plugin_dirs,
                       llm_cache=args.llm_cache, tag=args.tag,
                       command=["valuesim", *sys.argv[1:]],
                       progress=progress)
        except Interrupted as exc:
            print(f"valuesim: {exc}", file=sys.stderr)
            return 1
    return _report(path, args.json)


def _train(args) -> int:
    import yaml

    from .errors import ValuesimError

    params = {}
    for item in args.algo_params:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValuesimError(f"--param must be KEY=VALUE, got {item!r}")
        params[key] = yaml.safe_load(value)
    from .marl.train import resume, train

    if args.resume:
        path = resume(args.resume, progress_bar=not args.quiet)
    elif args.scenario is None:
        raise ValuesimError("give a scenario to train, or --resume RUN_DIR")
    else:
        path = train(args.scenario, backend=args.backend, algo=args.algo, timesteps=args.timesteps,
                     worlds=args.worlds, device=args.device, seed=args.seed, out=args.out, runs_dir=args.runs_dir,
                     overrides=args.overrides, algo_params=params, eval_every=args.eval_every,
                     checkpoint_every=args.checkpoint_every, progress_bar=not args.quiet,
                     command=["valuesim", *sys.argv[1:]])
    record = json.loads((path / "train.json").read_text())
    if args.json:
        print(json.dumps({"run_dir": str(path), "status": record["status"], "evaluation": record["evaluation"]}))
    else:
        ev = record["evaluation"]
        print(f"mean return per agent: {ev['return']:.4g} (random policy: {ev['random_return']:.4g})", file=sys.stderr)
        name = {"torchrl": "policy.pt", "rllib": "policy_rllib"}.get(record["settings"]["backend"], "policy.zip")
        print(f"policy: {path / name}")
    return 0


def _shapley(args) -> int:
    from .shapley.analysis import format_table, shapley

    with _shapley_progress(args.quiet) as progress:
        table = shapley(args.source, metric=args.metric, players=args.players, at=args.at, windows=args.windows,
                        null=args.null, method=args.method, se=args.se, budget=args.budget,
                        replicates=args.replicates, batch=args.batch, executor=args.executor, device=args.device,
                        seed=args.seed, out=args.out, runs_dir=args.runs_dir, overrides=args.overrides,
                        progress=progress, command=["valuesim", *sys.argv[1:]])
    if args.json:
        print(json.dumps({"run_dir": table.attrs.get("run_dir"), "rows": table.to_dict(orient="records"),
                          "diagnostics": {k: v for k, v in table.attrs.items() if k != "run_dir"}}, default=str))
    else:
        print(format_table(table))
        print(f"run log: {table.attrs.get('run_dir')}")
    return 0


class _shapley_progress:
    """Evaluations done and the largest standard error so far, on stderr (nothing when quiet)."""

    def __init__(self, quiet: bool):
        self.quiet = quiet
        self.bar = None

    def __enter__(self):
        if self.quiet:
            return None
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn

        def update(worlds: int, budget: int | None, max_se: float | None) -> None:
            if self.bar is None:
                self.bar = Progress(TextColumn("worlds {task.completed}"), BarColumn(),
                                    TextColumn("{task.fields[se]}"), console=Console(stderr=True))
                self.bar.start()
                self.task = self.bar.add_task("shapley", total=budget, se="")
            self.bar.update(self.task, completed=worlds, total=budget,
                            se="" if max_se is None else f"largest se {max_se:.3g}")

        return update

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.stop()
        return False


def _resume(args) -> int:
    from .runs.runner import Interrupted, resume

    with _progress(args.quiet) as progress:
        try:
            path = resume(args.run_dir, device=args.device, command=["valuesim", *sys.argv[1:]], progress=progress)
        except Interrupted as exc:
            print(f"valuesim: {exc}", file=sys.stderr)
            return 1
    return _report(path, args.json)


def _runs(args) -> int:
    from .runs.reading import list_runs

    rows, warnings = list_runs(args.runs_dir)
    for warning in warnings:
        print(f"valuesim: warning: {warning}", file=sys.stderr)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print(f"no runs in {args.runs_dir}", file=sys.stderr)
        return 0
    header = ("run", "scenario", "status", "seed", "worlds", "steps", "started", "overrides")
    table = [(r["run"], str(r["scenario"]), r["status"], str(r["seed"]), str(r["worlds"]),
              f"{r['last_step'] if r['last_step'] is not None else '?'}/{r['steps']}",
              str(r["started"] or "")[:19].replace("T", " "), " ".join(r["overrides"]) or "-") for r in rows]
    widths = [max(len(h), *(len(row[i]) for row in table)) for i, h in enumerate(header[:-1])]
    for row in (header, *table):
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[-1])
    return 0


def _report(path: Path, as_json: bool) -> int:
    from .runs.runlog import read_manifest

    manifest = read_manifest(path)
    warnings = manifest.get("warnings") or []
    for warning in warnings:  # the run did what it was asked, but not what the scenario may have meant
        print(f"valuesim: warning: {warning}", file=sys.stderr)
    if as_json:
        print(json.dumps({"run_dir": str(path), "status": manifest["status"], "steps": manifest.get("last_step"),
                          "warnings": warnings}))
    else:
        print(f"run log: {path}")
    return 0


class _progress:
    """A rich progress bar on stderr (nothing when quiet): what is being done before the first step completes
    (building the world, loading a model, step 1), then the steps."""

    def __init__(self, quiet: bool, console=None):
        self.quiet = quiet
        self.console = console
        self.bar = None
        self.task = None

    def __enter__(self):
        return None if self.quiet else self

    def phase(self, text: str, step: int = 0, total: int = 0) -> None:
        """Show ``text`` (``building the world``, ``step 1 of 200``) until the next step completes."""
        self._start(step, total or None, text)

    def __call__(self, step: int, total: int) -> None:
        self._start(step, total, "steps")
        self.bar.update(self.task, completed=step, total=total, description="steps")

    def _start(self, step: int, total: int | None, text: str) -> None:
        if self.task is None:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                TimeRemainingColumn(), console=self.console or Console(stderr=True), transient=False)
            self.bar.start()
            self.task = self.bar.add_task(text, total=total, completed=step)
        self.bar.update(self.task, description=text, completed=step, total=total)

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.stop()
        return False


CALIBRATE_EXAMPLES = """\
examples:
  valuesim calibrate scenarios/ego_networks.yaml --targets scenarios/ego_networks/targets.yaml \\
      --param population.people.confidence=0.05:0.6 --param population.people.rate=0.05:0.5
  valuesim calibrate s.yaml --targets t.yaml --param population.people.rate=0.05:0.5 \\
      --param dynamics.noise.sigma=0:0.05 --method cmaes --budget 480 --seeds 16 --json

Each iteration evaluates the whole swarm as one batched run: every candidate is SEEDS worlds of one batch,
on the same random streams as every other candidate. Keys that can vary per world: a group's per-agent
parameters and their distributions (population.G.confidence, .rate, .anchoring, .zealots,
population.G.confidence.low, ...) and a group's policy parameters (population.G.policy.P.param). Any other
key (network, dynamics, counts, steps) is evaluated one batch per distinct value: correct, but as slow as a
run per candidate. The targets file (metric values with se or tolerance, and/or observed trajectories) is
described in the README's Calibration section.

exit codes: 0 success, 1 the calibration failed, 2 bad input
"""


def _report_parsers(sub) -> None:
    rp = sub.add_parser("report", help="one self-contained HTML file of plots and tables for run directories",
                        epilog="examples:\n  valuesim report runs/quickstart__20261125T120000Z__s42 -o report.html\n"
                               "  valuesim report runs/a runs/b runs/c -o compare.html   # side by side",
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    rp.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories, one column each")
    rp.add_argument("-o", "--out", default="report.html", help="the HTML file to write (default: report.html)")
    rp.add_argument("--title", help="the report's title (default: the runs' names)")
    vz = sub.add_parser("viz", help="watch a small scenario run in the browser (Mesa's SolaraViz on 127.0.0.1)",
                        epilog="examples:\n  valuesim viz scenarios/deffuant_clusters.yaml --set population.people.count=200\n"
                               "  valuesim viz scenarios/quickstart.yaml --set population.citizens.count=300 --port 8777",
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    vz.add_argument("scenario", help="scenario YAML file (at most 2,000 agents)")
    vz.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a scenario field by dotted path (repeatable)")
    vz.add_argument("--seed", type=SEED, help="override the scenario's seed")
    vz.add_argument("--port", type=_integer("port", 1, 65535, "65535"), default=8765,
                    help="the port on 127.0.0.1 (default: 8765)")


def _report_html(args) -> int:
    from .analysis.report import report

    print(report(args.run_dirs, args.out, title=args.title))
    return 0


def _viz(args) -> int:
    from .analysis.viz import serve

    return serve(args.scenario, overrides=args.overrides, seed=args.seed, port=args.port)


def _calibrate_parser(sub) -> None:
    c = sub.add_parser("calibrate", help="fit scenario parameters to metric values or observed value trajectories",
                       epilog=CALIBRATE_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    c.add_argument("scenario", help="scenario YAML file")
    c.add_argument("--targets", required=True, metavar="TARGETS.yaml", help="what to fit (see below)")
    c.add_argument("--param", dest="params", action="append", default=[], metavar="KEY=LOW:HIGH",
                   help="a scenario key to search and its range (repeatable), e.g. population.people.rate=0.05:0.5")
    c.add_argument("--method", choices=("pso", "cmaes"), default="pso",
                   help="particle swarm (default) or CMA-ES (the cmaes package)")
    c.add_argument("--budget", type=int, default=320, metavar="EVALUATIONS",
                   help="candidates to evaluate in all (default 320)")
    c.add_argument("--swarm", type=int, default=16, help="candidates per iteration, one batch (default 16)")
    c.add_argument("--seeds", type=int, default=8, metavar="R",
                   help="random streams each candidate is run on, shared by all candidates (default 8)")
    c.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a scenario field first (repeatable)")
    c.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    c.add_argument("--out", help="calibration directory (default: runs/<scenario>__<UTC time>__s<seed>__calibrate)")
    c.add_argument("--runs-dir", default="runs", help="where calibration directories go (default: runs)")
    c.add_argument("--quiet", action="store_true", help="no progress bar")
    c.add_argument("--json", action="store_true", help="print a JSON summary on stdout")


def _calibrate(args) -> int:
    from .calibrate import fit

    with _calibration_progress(args.quiet) as progress:
        result = fit(args.scenario, args.targets, args.params, method=args.method, budget=args.budget,
                     swarm=args.swarm, seeds=args.seeds, out=args.out, runs_dir=args.runs_dir, device=args.device,
                     overrides=args.overrides, progress=progress, command=["valuesim", *sys.argv[1:]])
    if args.json:
        print(json.dumps({"run_dir": str(result.run_dir), "params": result.params, "loss": result.loss,
                          "set_flags": result.set_flags, "evaluations": result.evaluations,
                          "baselines": result.baselines}))
        return 0
    for key, value in result.params.items():
        print(f"{key} = {value:g}")
    print(f"loss {result.loss:.6g} after {result.evaluations} evaluations")
    for name in ("persistence", "degroot", "degroot_fitted"):
        if f"{name}_mse" in result.baselines:
            print(f"one-step MSE: model {result.baselines['model_mse']:.6g}, {name} "
                  f"{result.baselines[f'{name}_mse']:.6g}")
    print("reproduce with: " + " ".join(["valuesim run", args.scenario, *(f"--set {f}" for f in args.overrides),
                                         *(f"--set {f}" for f in result.set_flags)]))
    print(f"calibration: {result.run_dir}")
    return 0


class _calibration_progress:
    """A rich progress bar of iterations and the best loss so far, on stderr."""

    def __init__(self, quiet: bool):
        self.quiet, self.bar, self.task = quiet, None, None

    def __enter__(self):
        if self.quiet:
            return None
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        bar = Progress(TextColumn("iterations"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                       TextColumn("best loss {task.fields[best]}"), console=Console(stderr=True))

        def update(iteration: int, total: int, best: float) -> None:
            if self.task is None:
                self.bar = bar
                bar.start()
                self.task = bar.add_task("calibrate", total=total, best="-")
            self.bar.update(self.task, completed=iteration, best=f"{best:.6g}")

        return update

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.stop()
        return False



ANALYSIS_EXAMPLES = """\
examples:
  valuesim analyze runs/quickstart__20261125T120000Z__s42
  valuesim analyze runs/deffuant_clusters__*__s1 runs/deffuant_clusters__*__s2 --pool --json   # runs as seeds
  valuesim compare runs/coevolution__20261125T120000Z__s7 runs/coevolution_static__20261125T121500Z__s7
  valuesim sweep scenarios/deffuant_clusters.yaml --grid population.people.confidence=0.05:0.5:10 --seeds 4
  valuesim sweep scenarios/quickstart.yaml --grid population.citizens.confidence=0.1,0.2,0.3 \\
      --grid dynamics.noise.sigma=0,0.01 --seeds 8 --set steps=50 --executor ray

analyze: final and peak drift per group and dimension, polarisation, clusters, consensus time, diversity,
alignment gaps and lock-in, decision metrics and the Shapley table, each with a 95% interval over worlds.
compare: the differences of every reading at the end and along the trajectories (paired per world when
the runs share seed and streams), with intervals and whether the runs' intervals overlap.
sweep: every grid point runs SEEDS worlds on streams 0..SEEDS-1 (world r of a point is world r of
`valuesim run --worlds SEEDS` with that point's --set flags); points that differ only in per-agent or policy
parameters are worlds of one batch, others separate batches (a process pool, or Ray with --executor ray).
The result is a run directory with sweep.parquet: point, one column per key, seed, step, metric, group,
dimension, value.

exit codes: 0 success, 1 the sweep failed, 2 bad input
"""


def _analysis_parsers(sub) -> None:
    an = sub.add_parser("analyze", help="a summary of run directories with 95%% intervals over worlds",
                        epilog=ANALYSIS_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    an.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories (one summary each)")
    an.add_argument("--pool", action="store_true", help="pool the runs as seeds of one scenario (one summary)")
    an.add_argument("--json", action="store_true", help="print the summaries as JSON")
    cp = sub.add_parser("compare", help="the differences between two runs, with intervals",
                        epilog=ANALYSIS_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    cp.add_argument("run_a", metavar="RUN_A")
    cp.add_argument("run_b", metavar="RUN_B")
    cp.add_argument("--top", type=_integer("top", 1), default=40, help="readings shown per table (default 40)")
    cp.add_argument("--json", action="store_true", help="print the comparison (with the per-step series) as JSON")
    sw = sub.add_parser("sweep", help="run a scenario over a grid of parameters, points as batched worlds",
                        epilog=ANALYSIS_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    sw.add_argument("scenario", help="scenario YAML file")
    sw.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2|START:STOP:COUNT", required=True,
                    help="a dotted key and its values (repeatable; the grid is the product)")
    sw.add_argument("--seeds", type=WORLDS, default=4, help="worlds per point, streams 0..R-1 (default 4)")
    sw.add_argument("--executor", default="local", choices=("local", "ray"),
                    help="local (one process, or a pool when points need separate batches) or ray")
    sw.add_argument("--workers", type=_integer("workers", 1), help="processes of the local pool (default: cores)")
    sw.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a scenario field by dotted path (repeatable)")
    sw.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    sw.add_argument("--out", help="run directory (default: runs/<scenario>__<UTC time>__s<seed>__sweep)")
    sw.add_argument("--runs-dir", default="runs", help="where run directories go (default: runs)")
    sw.add_argument("--quiet", action="store_true", help="no progress bar")
    sw.add_argument("--json", action="store_true", help="print a JSON summary on stdout")


def _analyze(args) -> int:
    from .analysis import summary as analysis

    groups = [args.run_dirs] if args.pool else [[d] for d in args.run_dirs]
    results = [analysis.summarize(runs, pool=True) for runs in groups]
    if args.json:
        print(json.dumps([analysis.to_json(r) for r in results] if len(results) > 1 else analysis.to_json(results[0]),
                         indent=2))
        return 0
    console = _table_console()
    for result in results:
        analysis.render(result, console)
    return 0


def _compare(args) -> int:
    from .analysis import compare as comparing

    result = comparing.compare(args.run_a, args.run_b, series=args.json)
    if args.json:
        print(json.dumps(comparing.to_json(result), indent=2))
        return 0
    comparing.render(result, _table_console(), top=args.top)
    return 0


def _table_console():
    """A rich console for tables; piped output gets room for whole metric names rather than 80 columns."""
    from rich.console import Console

    return Console() if sys.stdout.isatty() else Console(width=200)


def _sweep(args) -> int:
    from .analysis.sweep import sweep

    with _progress(args.quiet) as progress:
        path = sweep(args.scenario, args.grid, seeds=args.seeds, executor=args.executor, workers=args.workers,
                     device=args.device, out=args.out, runs_dir=args.runs_dir, overrides=args.overrides,
                     command=["valuesim", *sys.argv[1:]], progress=progress)
    manifest = json.loads((path / "manifest.json").read_text())
    if args.json:
        print(json.dumps({"run_dir": str(path), "status": manifest["status"], "points": manifest["grid"]["points"],
                          "seeds": manifest["seeds"], "batches": manifest["grid"]["batches"],
                          "seconds": manifest.get("seconds"), "table": str(path / "sweep.parquet")}))
    else:
        print(f"sweep: {manifest['grid']['points']} points x {manifest['seeds']} seeds in "
              f"{manifest['grid']['batches']} batch(es), {manifest.get('seconds')} s", file=sys.stderr)
        print(f"run log: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
