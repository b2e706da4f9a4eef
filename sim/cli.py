"""The ``valuesim`` command. The only module that knows about the terminal."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

EXAMPLES = """\
examples:
  valuesim run scenarios/quickstart.yaml
  valuesim run scenarios/quickstart.yaml --seed 7 --worlds 8 --set steps=50 --set population.citizens.count=2000
  valuesim validate scenarios/quickstart.yaml
  valuesim resume runs/quickstart__20261125T120000Z__s42

exit codes: 0 success, 1 the run failed or was interrupted, 2 bad input
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="valuesim", description="Simulate how human and AI values change together.",
                                epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="store_true", help="print the version and exit")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    r = sub.add_parser("run", help="run a scenario and write a run log", epilog=EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    r.add_argument("scenario", help="scenario YAML file")
    r.add_argument("--seed", type=int, help="override the scenario's seed")
    r.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a scenario field by dotted path (repeatable), e.g. --set steps=50")
    r.add_argument("--worlds", type=int, help="number of parallel worlds B (replicates)")
    r.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    r.add_argument("--out", help="run directory to write (default: runs/<scenario>__<UTC time>__s<seed>)")
    r.add_argument("--runs-dir", default="runs", help="where run directories go (default: runs)")
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    r.add_argument("--json", action="store_true", help="print a JSON summary on stdout")

    v = sub.add_parser("validate", help="check a scenario without running it")
    v.add_argument("scenario")
    v.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    v.add_argument("--json", action="store_true", help="print the resolved scenario as JSON")

    pl = sub.add_parser("plugins", help="list the installed plugins")
    pl_sub = pl.add_subparsers(dest="plugins_command", metavar="list")
    ls = pl_sub.add_parser("list", help="list plugins by kind")
    ls.add_argument("--kind", help="only this kind (dynamics, networks, metrics, policies, ...)")
    ls.add_argument("--json", action="store_true")

    s = sub.add_parser("resume", help="finish an interrupted run from its checkpoint")
    s.add_argument("run_dir")
    s.add_argument("--device", default=None, help="device to resume on (default: the run's)")
    s.add_argument("--quiet", action="store_true")
    s.add_argument("--json", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.version:
        from . import __version__

        print(__version__)
        return 0
    if args.command is None:
        _parser().print_help(sys.stderr)
        return 2
    from .errors import RunFailed, ValuesimError

    try:
        return {"run": _run, "validate": _validate, "resume": _resume, "plugins": _plugins}[args.command](args)
    except ValuesimError as exc:
        print(f"valuesim: error: {exc}", file=sys.stderr)
        return 2
    except RunFailed as exc:
        print(f"valuesim: {exc}", file=sys.stderr)
        return 1


def _validate(args) -> int:
    from .engine import Simulation
    from .scenario import load_scenario

    scenario = load_scenario(args.scenario, args.overrides)
    Simulation.build(scenario, worlds=1)  # builds the network and population too: files, sizes, profiles
    if args.json:
        print(json.dumps(scenario.to_dict(), indent=2))
    else:
        print(f"{args.scenario}: ok ({scenario.spec.num_agents} agents, {len(scenario.spec.population)} groups, "
              f"{scenario.spec.steps} steps)")
    return 0


def _plugins(args) -> int:
    from . import registry

    args.kind = getattr(args, "kind", None)  # bare `valuesim plugins` lists everything
    args.json = getattr(args, "json", False)
    kinds = registry.KINDS if args.kind is None else (args.kind,)
    if args.kind is not None and args.kind not in registry.KINDS:
        from .errors import PluginError

        raise PluginError(registry.unknown_name_message("plugin kind", args.kind, list(registry.KINDS), "kinds"))
    rows = []
    for kind in kinds:
        for name, ep in sorted(registry.entry_points(kind).items()):
            rows.append({"kind": kind, "name": name, "object": ep.value,
                         "distribution": getattr(ep.dist, "name", None)})
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for row in rows:
        print(f"{row['kind']:<12} {row['name']:<20} {row['object']}  ({row['distribution']})")
    return 0


def _run(args) -> int:
    from .runner import Interrupted, run

    with _progress(args.quiet) as progress:
        try:
            path = run(args.scenario, seed=args.seed, worlds=args.worlds, device=args.device, out=args.out,
                       runs_dir=args.runs_dir, overrides=args.overrides, command=["valuesim", *sys.argv[1:]],
                       progress=progress)
        except Interrupted as exc:
            print(f"valuesim: {exc}", file=sys.stderr)
            return 1
    return _report(path, args.json)


def _resume(args) -> int:
    from .runner import Interrupted, resume

    with _progress(args.quiet) as progress:
        try:
            path = resume(args.run_dir, device=args.device, command=["valuesim", *sys.argv[1:]], progress=progress)
        except Interrupted as exc:
            print(f"valuesim: {exc}", file=sys.stderr)
            return 1
    return _report(path, args.json)


def _report(path: Path, as_json: bool) -> int:
    from .runlog import read_manifest

    manifest = read_manifest(path)
    if as_json:
        print(json.dumps({"run_dir": str(path), "status": manifest["status"], "steps": manifest.get("last_step")}))
    else:
        print(f"run log: {path}")
    return 0


class _progress:
    """A rich progress bar on stderr (nothing when quiet or not a terminal-like stream)."""

    def __init__(self, quiet: bool):
        self.quiet = quiet
        self.bar = None
        self.task = None

    def __enter__(self):
        if self.quiet:
            return None
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        bar = Progress(TextColumn("steps"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                       console=Console(stderr=True), transient=False)

        def update(step: int, total: int) -> None:
            if self.task is None:  # started on the first step, so a bad input prints no empty bar
                self.bar = bar
                bar.start()
                self.task = bar.add_task("run", total=total, completed=step)
            self.bar.update(self.task, completed=step, total=total)

        return update

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.stop()
        return False


if __name__ == "__main__":
    sys.exit(main())
