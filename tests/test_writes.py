"""Writes that survive kill -9: temp names DVC ignores, stale temps swept, unwritable outputs found first."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from pipeline.common.atomic import STALL_ENV, OutputError, atomic_dir, check_writable, stale_leftovers, sweep_stale
from tests.conftest import REPO, write_params


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_temp_names_are_dvc_ignored():
    # DVC skips .dvcignore'd names when it hashes a directory dependency such as artifacts/ladder.
    from dvc.ignore import DvcIgnoreFilter
    from dvc.fs import LocalFileSystem

    ignore = DvcIgnoreFilter(LocalFileSystem(), str(REPO))
    ladder = os.path.join(str(REPO), "artifacts", "ladder")
    for name in (f".f60.{os.getpid()}.ab_12x.tmp", f".f60.{os.getpid()}.old", ".dense.k2j3.tmp", ".tasks.jsonl.9.x.tmp"):
        assert ignore.is_ignored_dir(os.path.join(ladder, name)) or ignore.is_ignored_file(os.path.join(ladder, name))
    assert not ignore.is_ignored_dir(os.path.join(ladder, "f60"))


def test_sweep_removes_dead_writers_leftovers_only(tmp_path):
    out = tmp_path / "f60"
    dead, alive = _dead_pid(), os.getppid()
    leftovers = [tmp_path / f".f60.{dead}.q1w2e3.tmp", tmp_path / f".f60.{dead}.old", tmp_path / ".f60.legacy9.tmp"]
    for p in leftovers:
        p.mkdir()
        (p / "model.safetensors").write_bytes(b"half")
    live = tmp_path / f".f60.{alive}.r4t5y6.tmp"
    live.mkdir()
    other = tmp_path / f".f6.{dead}.zz.tmp"  # another output's temp: not ours to sweep
    other.mkdir()
    assert sorted(stale_leftovers(out)) == sorted(leftovers)
    sweep_stale(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, other.name])


def test_atomic_dir_names_its_temp_with_its_pid_and_cleans_up(tmp_path):
    out = tmp_path / "rung"
    with atomic_dir(out) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(f".rung.{os.getpid()}.") and tmp.name.endswith(".tmp")
        (tmp / "a").write_text("1")
    with atomic_dir(out) as tmp:
        (tmp / "a").write_text("2")
    assert [p.name for p in tmp_path.iterdir()] == ["rung"] and (out / "a").read_text() == "2"


def _stalled_writer(out, marker, extra_env=None):
    """A process writing `out` with atomic_dir, held just before its rename."""
    code = ("from pipeline.common.atomic import atomic_dir\n"
            f"with atomic_dir({str(out)!r}) as t: (t / 'a').write_text('new')\n")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO,
                            env={**os.environ, STALL_ENV: str(marker), **(extra_env or {})})
    deadline = time.time() + 60
    while not marker.exists():
        assert proc.poll() is None and time.time() < deadline, "the writer never reached its rename"
        time.sleep(0.05)
    return proc


def _wait_until(cond, seconds=10.0):
    deadline = time.time() + seconds
    while not cond() and time.time() < deadline:
        time.sleep(0.05)
    return cond()


def test_kill_9_mid_write_leaves_the_old_output_and_no_temp(tmp_path):
    """SIGKILL after the temp is complete and before the rename: the old output is intact, and the
    guard removes the temp at once."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "a").write_text("old")
    proc = _stalled_writer(out, tmp_path / "stalled")
    temps = lambda: [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]  # noqa: E731
    assert len(temps()) == 1 and (temps()[0] / "a").read_text() == "new"  # complete, never renamed
    proc.kill()
    proc.wait()
    assert _wait_until(lambda: not temps()), temps()
    assert (out / "a").read_text() == "old"


def test_a_temp_the_guard_missed_is_swept_by_the_next_write(tmp_path):
    """Writer and guard both killed (a crash of everything): the next write of that output sweeps it."""
    out = tmp_path / "out"
    proc = _stalled_writer(out, tmp_path / "stalled")
    import psutil

    guards = psutil.Process(proc.pid).children()  # the writer's guard process
    assert len(guards) == 1
    guards[0].kill()
    proc.kill()
    proc.wait()
    time.sleep(0.5)
    assert [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]  # left behind
    with atomic_dir(out) as tmp:
        (tmp / "a").write_text("newer")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "stalled"]


def test_unwritable_output_location_is_found_before_the_work(tmp_path, tiny_raw):
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("a file where the output's parent should be")
    with pytest.raises(OutputError, match=r"cannot write .*not_a_dir/base: .*not_a_dir is not a writable directory"):
        check_writable(blocker / "base")
    if os.geteuid() != 0:  # root ignores permission bits
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        with pytest.raises(OutputError, match="is not a writable directory"):
            check_writable(ro / "base")
    # A stage refuses at start: the base stage would otherwise build the model first.
    params = write_params(tmp_path / "params.yaml", tiny_raw)
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "pipeline.base", "--params", str(params), "--out",
                          str(blocker / "base")], cwd=REPO, capture_output=True, text=True)
    assert res.returncode != 0 and "base: cannot write" in res.stderr and "Traceback" not in res.stderr
    assert time.perf_counter() - t0 < 30
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_stage_start_sweeps_its_own_stale_output(tmp_path, tiny_raw):
    """A stage killed earlier left a temp next to its output; the stage's next start removes it."""
    from pipeline.common.stage import begin
    from pipeline.data import _args

    params = write_params(tmp_path / "params.yaml", tiny_raw)
    stale = tmp_path / f".data.{_dead_pid()}.abc123.tmp"
    stale.mkdir()
    (stale / "tasks.jsonl").write_text("half\n")
    neighbour = tmp_path / f".calibrate.{_dead_pid()}.abc123.tmp"  # another stage's: left to that stage
    neighbour.mkdir()
    begin("data", _args, ["--params", str(params), "--out", str(tmp_path / "data")])
    assert not stale.exists() and neighbour.exists()
