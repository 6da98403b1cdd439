"""Atomic writes that survive `kill -9`: a stage that dies leaves the old output or none, never half.

A file or directory is built under a temporary name next to its destination (the same filesystem,
so the final rename is atomic) and renamed into place. A directory replaces an older one with two
renames; between them there is *no* directory, which DVC treats as a missing output, not a corrupt
one.

Temporary names carry the writer's pid: `.<name>.<pid>.<random>.tmp` while writing and
`.<name>.<pid>.old` for the previous version during a directory swap. So:
- DVC never reads them: `.dvcignore` lists `.*.tmp` and `.*.old`, so a directory dependency such
  as `artifacts/ladder` hashes the same while a stage writes into it, or after one was killed;
- a temporary directory is watched by a small guard process (its own session, so a signal to the
  stage's process group does not reach it) that deletes it if the writer dies before renaming
  it, within a fraction of a second of a `kill -9`. That matters because after a kill DVC may
  restore the stage from its run cache instead of running it again;
- `sweep_stale` removes whatever a dead writer left when the guard could not (the machine went
  down, or everything was killed): every stage sweeps its outputs' leftovers at start
  (`pipeline.common.stage.begin`), and every atomic write sweeps those of its own destination.

`check_writable` probes an output location; stages call it at start, so a read-only directory
fails before the work, not at the final rename.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

from pipeline.common.assets import AssetError

# Test-only: when set to a path, a write touches that file once its temporary output is complete
# and then stalls before the rename, so a test can kill the process at a known point.
STALL_ENV = "LADDER_TEST_STALL_BEFORE_RENAME"


class OutputError(AssetError):
    """An output location cannot be written."""


def _temp_prefix(path: Path) -> str:
    return f".{path.name}.{os.getpid()}."


def _stall_for_test() -> None:
    marker = os.environ.get(STALL_ENV)
    if marker:
        Path(marker).write_text(str(os.getpid()))
        time.sleep(3600)


# Runs in its own interpreter (stdlib only): waits while the writer lives and its temporary
# directory exists; if the writer dies first, deletes the temporary directory and any half-swapped
# previous version (the output is then missing, which DVC treats as "rebuild").
_GUARD = """
import os, shutil, sys, time
writer, tmp, old = int(sys.argv[1]), sys.argv[2], sys.argv[3]
while os.path.lexists(tmp):
    try:
        os.kill(writer, 0)
    except ProcessLookupError:
        for p in (tmp, old):
            shutil.rmtree(p, ignore_errors=True)
        break
    except PermissionError:
        pass
    time.sleep(0.2)
"""


def _guard(tmp: Path, old: Path) -> None:
    import subprocess
    import sys

    subprocess.Popen([sys.executable, "-I", "-c", _GUARD, str(os.getpid()), str(tmp), str(old)],
                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                     start_new_session=True, close_fds=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def stale_leftovers(path: str | Path) -> list[Path]:
    """Temporary siblings of `path` whose writer is dead (or that predate pid-tagged names)."""
    path = Path(path)
    if not path.parent.is_dir():
        return []
    # .<name>.<pid>.<random>.tmp, .<name>.<pid>.<random>.probe.tmp, .<name>.<pid>.old; and the
    # names used before writers were tagged with their pid: .<name>.<random>.tmp, .<name>.old
    mine = re.compile(re.escape(f".{path.name}.")
                      + r"(?:(\d+)\.(?:\w+(?:\.probe)?\.tmp|old)|\w+\.tmp|old)")
    found = []
    for p in path.parent.iterdir():
        m = mine.fullmatch(p.name)
        if not m:
            continue
        pid = int(m.group(1)) if m.group(1) else None
        if pid is None or (pid != os.getpid() and not _pid_alive(pid)):
            found.append(p)
    return found


def sweep_stale(path: str | Path) -> list[Path]:
    """Remove what killed writers of `path` left behind; return what was removed."""
    removed = stale_leftovers(path)
    for p in removed:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
    return removed


def check_writable(path: str | Path) -> None:
    """Raise OutputError, naming the location, if an atomic write to `path` would fail."""
    path = Path(path)
    parent = path.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=".probe.tmp", dir=parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {parent} is not a writable directory ({exc.strerror or exc}); "
                          "make it writable or write elsewhere (--out)") from None


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale(path)
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        _stall_for_test()
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a fresh temporary directory; on success it replaces `path` whole."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale(path)
    tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(path), suffix=".tmp", dir=path.parent))
    tmp.chmod(0o755)  # mkdtemp makes it owner-only; outputs are meant to be shared
    old = path.with_name(f".{path.name}.{os.getpid()}.old")
    _guard(tmp, old)
    try:
        yield tmp
        _stall_for_test()
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    had_old = path.exists() or path.is_symlink()
    if had_old:
        shutil.rmtree(old, ignore_errors=True)
        os.replace(path, old)
    os.replace(tmp, path)
    if had_old:
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink()
