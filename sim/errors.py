"""The one small error hierarchy.

Every error a user can cause by what they wrote (a scenario, a flag, a plugin
name, a run directory) is a :class:`ValuesimError`. The CLI prints its message
as one line on stderr and exits with code 2; anything else is a bug and keeps
its traceback.
"""

from __future__ import annotations


class ValuesimError(Exception):
    """Bad input: the message is one line that says where, what was given and what is allowed."""

    exit_code = 2


class ScenarioError(ValuesimError):
    """A scenario file (or a ``--set`` override) that does not validate.

    ``location`` is ``file:line`` (or ``--set``), ``path`` the dotted field
    path inside the scenario, ``message`` what is wrong.
    """

    def __init__(self, message: str, *, location: str | None = None, path: str | None = None):
        self.location = location
        self.path = path
        self.message = message
        prefix = " ".join(p for p in (location, f"{path}:" if path else None) if p)
        super().__init__(f"{prefix} {message}" if prefix else message)


class PluginError(ValuesimError):
    """A plugin that cannot be found, loaded or that breaks its contract."""


class RunDirError(ValuesimError):
    """A run directory that does not exist, is not a run, or cannot be resumed."""


class RunStop(ValuesimError):
    """Something outside the world stops the run cleanly mid-step; it is marked ``interrupted``.

    The engine lets it through unwrapped (a plugin's other exceptions become a
    failed step); the runner keeps the last checkpoint, so the run can be
    resumed. Exit code 1: the input was fine.
    """

    exit_code = 1


class BudgetExhausted(RunStop):
    """A language-model backend's request or token budget is spent."""


class RunFailed(Exception):
    """A run stopped because something raised inside a step; the log is marked ``failed``.

    Exit code 1: the input was valid, the run did not finish.
    """

    exit_code = 1

    def __init__(self, message: str, run_dir=None):
        super().__init__(message)
        self.run_dir = run_dir
