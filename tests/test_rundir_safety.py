"""Run directories are safe to resume and never lose data (issue 14).

Checkpoints hold data only; a kill at each point of the write order leaves a
run that reads and resumes correctly; one process at a time; a full disk, a
corrupt file or an unwritable folder is one line; the API key reaches no file.
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import torch

import sim
from sim.cli import main
from sim.errors import RunDirError, RunFailed, RunLogWriteError
from sim.runs import runlog
from sim.runs.checkpoint import load_checkpoint, save_checkpoint
from sim.runs.runlog import RunLock, RunLog
from tests.conftest import REPO, small_scenario


class Killed(BaseException):
    """Stands for SIGKILL at a chosen instant: no handler of the runner catches it, so nothing after runs."""


def _scenario(write_scenario):
    return write_scenario(small_scenario(steps=12, log_every=3, log={"checkpoint_every": 3}))


@pytest.fixture
def whole(tmp_path, write_scenario):
    """An uninterrupted run to compare with."""
    return sim.run(_scenario(write_scenario), runs_dir=tmp_path / "whole")


def _same_tables(a, b):
    for name in ("metrics", "values"):
        pd.testing.assert_frame_equal(sim.open_run(a).table(name), sim.open_run(b).table(name), check_exact=True)


def _one_line(text: str) -> str:
    assert "\n" not in text.strip() and "Traceback" not in text, text
    return text


def _killed_run(tmp_path, write_scenario, monkeypatch, target, name, when) -> Path:
    """Run until ``when(*args)`` says so inside ``target.name``, and kill the run there."""
    real = getattr(target, name)

    def wrapper(*args, **kwargs):
        if when(*args, **kwargs):
            raise Killed()
        return real(*args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(target, name, wrapper)
        with pytest.raises(Killed):
            sim.run(_scenario(write_scenario), runs_dir=tmp_path / "cut")
    (run_dir,) = (tmp_path / "cut").iterdir()
    return run_dir


def _after(count: int, test):
    """A ``when`` that is true at the ``count``-th call for which ``test(*args)`` holds."""
    seen = []

    def when(*args, **kwargs):
        if test(*args):
            seen.append(1)
            return len(seen) == count
        return False

    return when


def _resumes_to_the_whole_run(run_dir, whole):
    view = sim.open_run(run_dir)
    assert view.status == "interrupted", "a killed run (its lock let go) reads as interrupted"
    view.metrics(), view.values(), view.events()  # readable as it stands
    assert sim.resume(run_dir) == run_dir
    _same_tables(whole, run_dir)
    assert sim.open_run(run_dir).status == "complete" and not (run_dir / "parts").exists()
    assert not (run_dir / ".checkpoint.new").exists() and not (run_dir / ".checkpoint.old").exists()


# ---------------------------------------------------------------- checkpoints hold data only


def test_the_serializer_gives_back_any_nesting_of_plain_data_and_tensors(tmp_path):
    snapshot = {
        "step": 7, "f": 0.1, "nan": float("nan"), "inf": float("-inf"), "flag": True, "none": None, "s": "x",
        "t32": torch.rand(3, 2), "i64": torch.arange(5), "mask": torch.tensor([True, False]),
        "state": torch.randint(0, 255, (16,), dtype=torch.uint8), "empty": torch.zeros(0),
        "view": torch.arange(10)[::2], "carry": [None, {"first_step": torch.tensor([-1, 3])}, (1, "two", [3.5])],
        "$looks_like_a_tag": {"$tensor": "t0"}, "new_key_of_a_later_engine": {"nested": [[1], []]},
    }
    folder = tmp_path / "ck"
    folder.mkdir()
    save_checkpoint(folder, snapshot, runlog.atomic_write_bytes)
    back = load_checkpoint(folder)
    assert back.keys() == snapshot.keys()
    for key, value in snapshot.items():
        if torch.is_tensor(value):
            assert back[key].dtype == value.dtype and torch.equal(back[key], value)
        elif key == "nan":
            assert back[key] != back[key]
        elif key != "carry":
            assert back[key] == value and type(back[key]) is type(value)
    assert back["carry"][0] is None and torch.equal(back["carry"][1]["first_step"], torch.tensor([-1, 3]))
    assert back["carry"][2] == (1, "two", [3.5])
    with pytest.raises(TypeError, match=r"snapshot\['odd'\] is a set"):
        save_checkpoint(folder, {"odd": {1}}, runlog.atomic_write_bytes)


class _Payload:
    """Unpickling this writes a file: what a hostile shared run directory would plant."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


def _interrupted_run(tmp_path, write_scenario, monkeypatch) -> Path:
    """A run killed at step 9, after the checkpoint of step 6 and before the next."""
    return _killed_run(tmp_path, write_scenario, monkeypatch, RunLog, "add_readings",
                       lambda self, step, readings: step == 9)


@pytest.mark.parametrize("where", ["state.pt", "state.safetensors", "state.json"])
def test_a_planted_pickle_is_refused_and_never_unpickled(tmp_path, write_scenario, monkeypatch, capsys, where):
    run_dir = _interrupted_run(tmp_path, write_scenario, monkeypatch)
    marker = tmp_path / "pwned.txt"
    blob = pickle.dumps({"step": 6, "x": _Payload(marker)})
    if where == "state.pt":  # an old-format checkpoint, as torch.save wrote it
        shutil.rmtree(run_dir / "checkpoint")
        (run_dir / "checkpoint").mkdir()
        torch.save({"step": 6, "x": _Payload(marker)}, run_dir / "checkpoint" / "state.pt")
    else:
        (run_dir / "checkpoint" / where).write_bytes(blob)
    assert main(["resume", str(run_dir), "--quiet"]) == 2
    err = _one_line(capsys.readouterr().err)
    assert err.startswith("valuesim: error: ") and str(run_dir / "checkpoint" / where) in err
    assert not marker.exists(), "the payload ran"
    with pytest.raises(RunDirError):
        sim.resume(run_dir)
    assert not marker.exists()


@pytest.mark.parametrize("tamper, message", [
    (lambda ck: (ck / "state.safetensors").write_bytes(b"\x00" * 64), "not a readable safetensors file"),
    (lambda ck: (ck / "state.json").write_text('{"format": "valuesim-checkpoint/1", "snapshot": '
                                                '{"step": 3, "values": {"$tensor": "t99"}}}'),
     "refers to tensor 't99'"),
    (lambda ck: (ck / "state.json").write_text('{"format": "valuesim-checkpoint/1", "snapshot": {"step": 3}}'),
     "the checkpoint does not fit this run (KeyError"),
    (lambda ck: (ck / "state.json").write_text("[1, 2"), "not a valuesim checkpoint"),
    (lambda ck: (ck / "state.json").unlink(), "the checkpoint is incomplete"),
])
def test_a_tampered_checkpoint_is_one_line(tmp_path, write_scenario, monkeypatch, capsys, tamper, message):
    run_dir = _interrupted_run(tmp_path, write_scenario, monkeypatch)
    tamper(run_dir / "checkpoint")
    assert main(["resume", str(run_dir), "--quiet"]) == 2
    err = _one_line(capsys.readouterr().err)
    assert message in err and str(run_dir / "checkpoint") in err


# ---------------------------------------------------------------- every instant a kill can hit


def _is_checkpoint_rename(src, dst, *rest):
    return Path(src).name == "checkpoint" and Path(dst).name == ".checkpoint.old"


def _is_new_swapped_in(src, dst, *rest):
    return Path(src).name == ".checkpoint.new"


WINDOWS = {
    # inside checkpoint(): the new folder half written (no `step` mark yet), beside the good one
    "checkpoint/writing new": (runlog, "atomic_write_bytes",
                               _after(3, lambda path, data: path.name == "step")),
    # between the two renames: .checkpoint.old and .checkpoint.new, and no checkpoint/
    "checkpoint/between renames": (runlog.os, "replace", None),
    # after the swap, before the old one is removed
    "checkpoint/old left": (runlog.shutil, "rmtree", None),
    # finish(): between gathering metrics.parquet and values.parquet
    "finish/one table gathered": (runlog, "atomic_write",
                                  lambda path, fill: path.name == "values.parquet"),
    # finish(): both tables in place, the manifest not yet complete
    "finish/tables before manifest": (RunLog, "write_manifest",
                                      lambda self: self.manifest.get("status") == "complete"),
}


def _window(name):
    target, attr, when = WINDOWS[name]
    if name == "checkpoint/between renames":
        real = os.replace
        calls = []

        def when(src, dst, *rest):  # let the first rename happen, then die before the second
            if _is_checkpoint_rename(src, dst):
                calls.append(1)
                if len(calls) == 2:
                    real(src, dst)
                    return True
            return False
    if name == "checkpoint/old left":
        when = _after(2, lambda path, *rest: Path(path).name == ".checkpoint.old" and Path(path).exists())
    return target, attr, when


@pytest.mark.parametrize("name", list(WINDOWS))
def test_a_kill_in_each_window_leaves_a_run_that_reads_and_resumes_to_the_same_result(
        tmp_path, write_scenario, monkeypatch, whole, name):
    target, attr, when = _window(name)
    run_dir = _killed_run(tmp_path, write_scenario, monkeypatch, target, attr, when)
    names = {p.name for p in run_dir.iterdir()}
    if name == "checkpoint/between renames":
        assert {".checkpoint.old", ".checkpoint.new"} <= names and "checkpoint" not in names
    if name == "checkpoint/old left":
        assert {"checkpoint", ".checkpoint.old"} <= names
    if name == "checkpoint/writing new":
        assert {"checkpoint", ".checkpoint.new"} <= names
    if name.startswith("finish"):
        assert json.loads((run_dir / "manifest.json").read_text())["status"] == "running"
        assert "metrics.parquet" in names and (run_dir / "parts").is_dir()
    _resumes_to_the_whole_run(run_dir, whole)


def test_a_kill_after_the_manifest_says_complete_leaves_the_tables_whole(tmp_path, write_scenario, monkeypatch,
                                                                         whole):
    run_dir = _killed_run(tmp_path, write_scenario, monkeypatch, runlog.shutil, "rmtree",
                          lambda path, *rest, **kw: Path(path).name == "parts")
    assert (run_dir / "parts").is_dir(), "killed before the parts were removed"
    view = sim.open_run(run_dir)
    assert view.status == "complete"
    _same_tables(whole, run_dir)
    with pytest.raises(RunDirError, match="already complete"):
        sim.resume(run_dir)


def test_a_run_an_older_valuesim_left_with_tables_and_no_parts_resumes_without_losing_rows(
        tmp_path, write_scenario, whole):
    """The old finish() removed parts/ before the manifest said complete: a kill there left this."""
    run_dir = sim.run(_scenario(write_scenario), runs_dir=tmp_path / "old")
    manifest = json.loads((run_dir / "manifest.json").read_text())
    manifest.update(status="running", pid=2**22 + 12345)
    (run_dir / "manifest.json").write_text(json.dumps(manifest))
    assert not (run_dir / "parts").exists()
    assert sim.resume(run_dir) == run_dir
    _same_tables(whole, run_dir)


def test_a_kill_before_the_first_checkpoint_resumes_from_the_beginning(tmp_path, write_scenario, monkeypatch,
                                                                        whole):
    run_dir = _killed_run(tmp_path, write_scenario, monkeypatch, runlog, "save_checkpoint",
                          lambda *args: True)
    assert sim.open_run(run_dir).status == "interrupted"
    assert main(["resume", str(run_dir), "--quiet"]) == 0  # nothing of it was kept: it starts again (issue 8)
    _same_tables(whole, run_dir)


# ---------------------------------------------------------------- one process at a time


def test_a_resume_while_the_run_goes_on_is_refused_naming_the_pid(tmp_path, write_scenario):
    refusals = []

    def progress(step, total):
        if step == 5:
            (run_dir,) = (tmp_path / "runs").iterdir()
            with pytest.raises(RunDirError) as refused:
                sim.resume(run_dir)
            refusals.append(str(refused.value))

    run_dir = sim.run(_scenario(write_scenario), runs_dir=tmp_path / "runs", progress=progress)
    assert refusals == [f"{run_dir}: another valuesim process (pid {os.getpid()}) is running or resuming "
                        "this run; wait for it to end or stop it"]
    assert sim.open_run(run_dir).status == "complete"


def test_a_second_resume_gets_one_line_and_exit_2_then_resumes_once_the_first_is_gone(
        tmp_path, write_scenario, monkeypatch, capsys, whole):
    run_dir = _interrupted_run(tmp_path, write_scenario, monkeypatch)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from sim.runs.runlog import RunLock; lock = RunLock(sys.argv[1]); "
                               "print('locked', flush=True); time.sleep(60)", str(run_dir)],
        stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert sim.open_run(run_dir).status == "running", "a held lock means someone is on it"
        assert main(["resume", str(run_dir), "--quiet"]) == 2
        err = _one_line(capsys.readouterr().err)
        assert err == (f"valuesim: error: {run_dir}: another valuesim process (pid {holder.pid}) is running or "
                       "resuming this run; wait for it to end or stop it\n")
    finally:
        holder.kill()
        holder.wait()
    assert main(["resume", str(run_dir), "--quiet"]) == 0
    _same_tables(whole, run_dir)


# ---------------------------------------------------------------- a full disk


def _disk_fills_after_checkpoint(patch, count: int, only) -> None:
    """From the ``count``-th checkpoint on, every atomic write ``only(path)`` accepts fails with ENOSPC."""
    real_checkpoint, real_write = RunLog.checkpoint, runlog.atomic_write
    done = []

    def no_room(tmp):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # as pyarrow raises it: no file name

    def failing_write(path, fill):
        return real_write(path, no_room if only(path) else fill)

    def checkpoint(self, snapshot):
        real_checkpoint(self, snapshot)
        done.append(1)
        if len(done) == count:
            patch.setattr(runlog, "atomic_write", failing_write)

    patch.setattr(RunLog, "checkpoint", checkpoint)


@pytest.mark.parametrize("what_fails", ["big files", "everything"])
def test_a_full_disk_stops_the_run_with_one_line_and_it_resumes_once_there_is_room(
        tmp_path, write_scenario, monkeypatch, capsys, whole, what_fails):
    only = (lambda p: p.name != "manifest.json") if what_fails == "big files" else (lambda p: True)
    runs = tmp_path / "runs"
    with monkeypatch.context() as patch:
        _disk_fills_after_checkpoint(patch, 2, only)
        assert main(["run", str(_scenario(write_scenario)), "--quiet", "--runs-dir", str(runs)]) == 1
    err = _one_line(capsys.readouterr().err)
    (run_dir,) = runs.iterdir()
    assert err.startswith(f"valuesim: error: cannot write {run_dir}/") and "no space left on the device" in err
    assert f"valuesim resume {run_dir}" in err and not list(run_dir.rglob(".*.tmp"))
    view = sim.open_run(run_dir)
    if what_fails == "big files":
        assert view.status == "failed" and "no space left" in view.manifest["error"]
    else:
        assert view.status == "interrupted" and "manifest could not be updated either" in err
    assert main(["resume", str(run_dir), "--quiet"]) == 0
    _same_tables(whole, run_dir)


# ---------------------------------------------------------------- corrupt files are one line


@pytest.mark.parametrize("content, message", [
    (b"[1, 2]", "manifest is a JSON list, not an object"),
    (b"{}", "manifest has no valid status"),
    (b"\x89PNG\r\n\x1a\n\x00\xff\xfe", "manifest is not text"),
    (b'{"status": "running",', "manifest is not valid JSON"),
])
def test_a_corrupt_manifest_is_one_line_for_resume_and_readers(tmp_path, write_scenario, monkeypatch, capsys,
                                                               content, message):
    run_dir = _interrupted_run(tmp_path, write_scenario, monkeypatch)
    (run_dir / "manifest.json").write_bytes(content)
    with pytest.raises(RunDirError, match=message):
        sim.open_run(run_dir)
    assert main(["resume", str(run_dir), "--quiet"]) == 2
    err = _one_line(capsys.readouterr().err)
    assert message in err and str(run_dir / "manifest.json") in err


def test_a_manifest_without_what_resume_needs_is_one_line(tmp_path, write_scenario, monkeypatch, capsys):
    run_dir = _interrupted_run(tmp_path, write_scenario, monkeypatch)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    del manifest["base_dir"]
    (run_dir / "manifest.json").write_text(json.dumps(manifest))
    assert main(["resume", str(run_dir), "--quiet"]) == 2
    assert "manifest.json: 'base_dir' must be a str, got None" in _one_line(capsys.readouterr().err)


def test_a_corrupt_part_file_is_one_line_for_resume_and_readers(tmp_path, write_scenario, monkeypatch, capsys):
    run_dir = _interrupted_run(tmp_path, write_scenario, monkeypatch)
    (run_dir / "metrics.parquet").unlink(missing_ok=True)
    part = sorted((run_dir / "parts").glob("metrics-*.parquet"))[0]
    part.write_bytes(b"PAR1 but not really")
    with pytest.raises(RunDirError, match="not a readable Parquet file") as refused:
        sim.open_run(run_dir).metrics()
    assert str(part) in _one_line(str(refused.value))
    before = sorted(p.name for p in run_dir.rglob("*"))
    assert main(["resume", str(run_dir), "--quiet"]) == 2
    err = _one_line(capsys.readouterr().err)
    assert str(part) in err and "not a readable Parquet file" in err
    assert sorted(p.name for p in run_dir.rglob("*")) == before, "a refused resume changes nothing"


def test_a_missing_scenario_is_one_line_for_resume_and_readers(tmp_path, write_scenario, monkeypatch, capsys):
    run_dir = _interrupted_run(tmp_path, write_scenario, monkeypatch)
    (run_dir / "scenario.yaml").unlink()
    with pytest.raises(RunDirError, match="scenario.yaml: missing"):
        sim.open_run(run_dir).scenario
    assert main(["resume", str(run_dir), "--quiet"]) == 2
    assert f"{run_dir / 'scenario.yaml'}: missing" in _one_line(capsys.readouterr().err)


def test_binary_events_are_one_line_for_resume_and_readers(tmp_path, write_scenario, monkeypatch, capsys):
    run_dir = _interrupted_run(tmp_path, write_scenario, monkeypatch)
    (run_dir / "events.jsonl").write_bytes(bytes(range(256)) * 4)
    with pytest.raises(RunDirError, match="events.jsonl: not a text file of JSON lines"):
        sim.open_run(run_dir).events()
    assert main(["resume", str(run_dir), "--quiet"]) == 2
    assert "events.jsonl: not a text file" in _one_line(capsys.readouterr().err)


def test_a_last_event_line_cut_by_a_kill_is_skipped_but_a_bad_line_before_it_is_not(tmp_path, write_scenario,
                                                                                     monkeypatch):
    run_dir = _interrupted_run(tmp_path, write_scenario, monkeypatch)
    events = run_dir / "events.jsonl"
    good = events.read_text()
    events.write_text(good + '{"time": "2026-01-01", "ste')
    assert sim.open_run(run_dir).events() == [json.loads(line) for line in good.splitlines()]
    events.write_text("not json\n" + good)
    with pytest.raises(RunDirError, match=r"events.jsonl:1 not a JSON event"):
        sim.open_run(run_dir).events()


# ---------------------------------------------------------------- where a run cannot be written


@pytest.fixture
def read_only_dir(tmp_path, monkeypatch):
    """A folder no one may write, even root: a read-only bind mount, else (no mount allowed) a patched mkdir."""
    folder = tmp_path / "ro"
    folder.mkdir()
    mounted = subprocess.run(["mount", "--bind", "-o", "ro", str(folder), str(folder)],
                             capture_output=True).returncode == 0
    if not mounted:
        real = os.mkdir

        def mkdir(path, *args, **kwargs):
            if Path(path).is_relative_to(folder):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
            return real(path, *args, **kwargs)

        real_access = os.access

        def access(path, mode, *args, **kwargs):
            if mode & os.W_OK and Path(path).is_relative_to(folder):
                return False
            return real_access(path, mode, *args, **kwargs)

        monkeypatch.setattr(os, "mkdir", mkdir)
        monkeypatch.setattr(os, "access", access)
    yield SimpleNamespace(path=folder, mounted=mounted)
    if mounted:
        subprocess.run(["umount", str(folder)], check=True)


@pytest.mark.parametrize("case", ["out is a file", "out under a file", "runs dir under a file", "name too long",
                                  "read-only"])
def test_an_unwritable_destination_is_one_line_exit_2_and_nothing_is_written(tmp_path, write_scenario, capsys,
                                                                            request, case):
    scenario = str(_scenario(write_scenario))
    (tmp_path / "afile").write_text("x")
    flags, reason = {
        "out is a file": (["--out", str(tmp_path / "afile")], "a file of that name exists"),
        "out under a file": (["--out", str(tmp_path / "afile" / "run")], "a part of the path is a file, not a folder"),
        "runs dir under a file": (["--runs-dir", str(tmp_path / "afile" / "runs")], "a part of the path is a file, not a folder"),
        "name too long": (["--out", str(tmp_path / ("x" * 300) / "run")], "a name in the path is too long"),
        "read-only": (["--runs-dir", "READ_ONLY"], ""),
    }[case]
    if case == "read-only":
        read_only = request.getfixturevalue("read_only_dir")
        flags = ["--runs-dir", str(read_only.path / "runs")]
        reason = "read-only file system" if read_only.mounted else "permission denied"
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    assert main(["run", scenario, "--quiet", *flags]) == 2
    err = _one_line(capsys.readouterr().err)
    assert err.startswith(f"valuesim: error: {flags[1]}: cannot create the run directory there ({reason})"), err
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before
    assert (tmp_path / "afile").read_text() == "x"


def test_a_folder_that_refuses_the_first_write_is_left_as_it_was(tmp_path, write_scenario, monkeypatch, capsys):
    def refuse(path, fill):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))

    monkeypatch.setattr(runlog, "atomic_write", refuse)
    out = tmp_path / "new" / "deeper" / "run"
    assert main(["run", str(_scenario(write_scenario)), "--quiet", "--out", str(out)]) == 2
    err = _one_line(capsys.readouterr().err)
    assert err == f"valuesim: error: {out}: cannot write the run log there (permission denied)\n"
    assert not (tmp_path / "new").exists(), "the folders it made are gone again"


def test_numba_caches_in_a_user_folder_when_the_kernels_folder_is_not_writable(tmp_path, read_only_dir):
    from sim import _place_numba_cache

    (tmp_path / "afile").write_text("x")
    for unwritable in (tmp_path / "afile" / "dynamics", read_only_dir.path):
        environ = {"XDG_CACHE_HOME": str(tmp_path / "cache")}
        _place_numba_cache(environ, unwritable)
        assert environ["NUMBA_CACHE_DIR"] == str(tmp_path / "cache" / "valuesim" / "numba")
        assert os.access(environ["NUMBA_CACHE_DIR"], os.W_OK)
    environ = {"XDG_CACHE_HOME": str(tmp_path / "cache")}
    _place_numba_cache(environ, tmp_path)  # writable: numba's own __pycache__ beside the kernels
    assert "NUMBA_CACHE_DIR" not in environ
    environ = {"NUMBA_CACHE_DIR": "/mine"}
    _place_numba_cache(environ, read_only_dir.path)
    assert environ == {"NUMBA_CACHE_DIR": "/mine"}, "a user's own setting wins"


# ---------------------------------------------------------------- the API key and the size of replies

SECRET = "sk-test-SECRET-9f3a"


def _openai_town(server, **backend):
    from tests.test_llm_agents import town

    data = town(steps=3, log_every=1)
    params = {"base_url": server.base_url, "model": "fake-1", "api_key_env": "VALUESIM_TEST_KEY",
              "timeout_s": 2, "backoff_s": 0.01, "max_retries": 1, **backend}
    data["population"][1]["backend"] = {"openai": params}
    data["population"][2]["backend"] = {"openai": params}
    return data


def _files_with(folder: Path, needle: bytes) -> list[str]:
    return [str(p) for p in folder.rglob("*") if p.is_file() and needle in p.read_bytes()]


def test_a_server_that_echoes_the_key_in_its_replies_leaves_no_key_in_any_file(tmp_path, write_scenario,
                                                                              monkeypatch):
    from sim.llm.testing import FakeChatServer

    monkeypatch.setenv("VALUESIM_TEST_KEY", SECRET)
    with FakeChatServer(fault_rates={"echo_auth": 1.0}) as server:
        run_dir = sim.run(write_scenario(_openai_town(server)), runs_dir=tmp_path / "runs")
    assert {r["fault"] for r in server.requests} == {"echo_auth"}
    replies = [e["response"] for e in sim.open_run(run_dir).events() if e["event"] == "llm_message"]
    assert replies and all("Authorization: Bearer ***" in r for r in replies)
    assert not _files_with(tmp_path, SECRET.encode()), "the key reached a file"


def test_a_huge_reply_is_kept_cut_and_marked_so_the_cache_stays_small(tmp_path, write_scenario, monkeypatch):
    from sim.llm.cache import MAX_REPLY_CHARS
    from sim.llm.testing import FakeChatServer

    monkeypatch.setenv("VALUESIM_TEST_KEY", SECRET)
    with FakeChatServer(fault_rates={"huge": 1.0}, huge_chars=300_000) as server:
        run_dir = sim.run(write_scenario(_openai_town(server)), runs_dir=tmp_path / "runs")
    replies = [e["response"] for e in sim.open_run(run_dir).events() if e["event"] == "llm_message"]
    assert replies and all(r.endswith("[truncated by valuesim: the reply had 300000 characters]")
                           for r in replies)
    assert all(len(r) == MAX_REPLY_CHARS for r in replies)
    calls = len(server.requests)
    cache = tmp_path / "runs" / ".llm-cache.sqlite"
    assert calls > 4 and cache.stat().st_size < 1.5 * calls * MAX_REPLY_CHARS, "whole replies would be 300 kB each"


def test_a_run_whose_every_llm_call_failed_is_marked_failed_exit_1(tmp_path, write_scenario, monkeypatch, capsys):
    from sim.llm.testing import FakeChatServer

    monkeypatch.setenv("VALUESIM_TEST_KEY", SECRET)
    with FakeChatServer(fault_rates={"401": 1.0}) as server:
        path = write_scenario(_openai_town(server))
        assert main(["run", str(path), "--quiet", "--runs-dir", str(tmp_path / "runs")]) == 1
    err = _one_line(capsys.readouterr().err)
    assert err.startswith("valuesim: error: every one of the ") and "language-model calls failed" in err
    assert "HTTP 401: Incorrect API key provided: Bearer ***" in err and SECRET not in err
    (run_dir,) = [p for p in (tmp_path / "runs").iterdir() if p.is_dir()]
    view = sim.open_run(run_dir)
    assert view.status == "failed" and "language-model calls failed" in view.manifest["error"]
    with pytest.raises(RunFailed, match="every one of the"):
        sim.resume(run_dir)  # resuming cannot make what failed succeed after the fact
