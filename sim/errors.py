"""The one small error hierarchy; each class carries the CLI's exit code for it.

Every error valuesim reports to a user is a :class:`ValuesimError`: the CLI
prints its message as one line on stderr and exits with the class's
``exit_code``; anything else is a bug and keeps its traceback.

    ValuesimError            2  bad input: a scenario, a flag, a plugin name, a run directory
      ScenarioError          2    a scenario file or ``--set`` override that does not validate
      PluginError            2    a plugin that cannot be found, loaded, or that breaks its contract
      RunDirError            2    a run directory that is not there, not a run, or not resumable
      RunStop                1  the input was fine; something outside the world stops a step cleanly
        BudgetExhausted      1    a language-model backend's budget is spent
      Interrupted            1  the run stopped (a signal, a RunStop) and can be resumed
      RunFailed              1  the input was fine; the run raised inside a step and is marked failed
        RunLogWriteError     1    a file of the run log could not be written mid-run

Range messages read the same everywhere (``must be in (0, 1], got 1.5``):
they all come from :class:`sim.core.interval.Interval`.
"""

from __future__ import annotations


class ValuesimError(Exception):
    """An error for the user: one line that says where, what was given and what is allowed.

    By default it is bad input (exit code 2); subclasses for runs that stop
    on valid input say 1.
    """

    exit_code = 2


class ScenarioError(ValuesimError):
    """A scenario file (or a ``--set`` override) that does not validate.

    ``location`` is ``file:line`` (or ``--set``), ``path`` the dotted field
    path inside the scenario, ``message`` what is wrong.
    """

    exit_code = 2

    def __init__(self, message: str, *, location: str | None = None, path: str | None = None):
        self.location = location
        self.path = path
        self.message = message
        prefix = " ".join(p for p in (location, f"{path}:" if path else None) if p)
        super().__init__(f"{prefix} {message}" if prefix else message)


class PluginError(ValuesimError):
    """A plugin that cannot be found, loaded or that breaks its contract."""

    exit_code = 2


class RunDirError(ValuesimError):
    """A run directory that does not exist, is not a run, or cannot be resumed."""

    exit_code = 2


class RunStop(ValuesimError):
    """Something outside the world stops the run cleanly mid-step; it is marked ``interrupted``.

    The engine lets it through unwrapped (a plugin's other exceptions become a
    failed step); the runner keeps the last checkpoint, so the run can be
    resumed. Exit code 1: the input was fine.
    """

    exit_code = 1


class BudgetExhausted(RunStop):
    """A language-model backend's request or token budget is spent."""


class Interrupted(ValuesimError):
    """The run was stopped (a signal, a spent budget); its log is marked ``interrupted`` and it can be resumed.

    Exit code 1: the input was fine. The CLI prints it without ``error:``.
    """

    exit_code = 1

    def __init__(self, run_dir, step: int, reason: str | None = None):
        why = f" ({reason})" if reason else ""
        super().__init__(f"interrupted at step {step}{why}; resume with: valuesim resume {run_dir}")
        self.run_dir = run_dir
        self.step = step


class RunFailed(ValuesimError):
    """A run stopped because something raised inside a step; the log is marked ``failed``.

    Exit code 1: the input was valid, the run did not finish.
    """

    exit_code = 1

    def __init__(self, message: str, run_dir=None):
        super().__init__(message)
        self.run_dir = run_dir


class RunLogWriteError(RunFailed):
    """A file of the run log could not be written mid-run (a full disk, a folder turned read-only).

    The run stops with one line and is marked ``failed`` where the manifest can
    still be written; it resumes from its last checkpoint once the cause is
    fixed. Exit code 1: the input was fine.
    """
