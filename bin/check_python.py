"""`make setup` runs this with the Python it is about to build .venv from, before anything else.

The range is stated once, as `requires-python` in pyproject.toml. If the interpreter is outside it,
this says so, names the range and the interpreter, and points at a Python on PATH that fits, instead
of letting pip fail minutes later with "requires a different Python". Written for any Python 3, so
the message comes out even from an old interpreter (no f-strings, no tomllib).
"""

import operator
import os
import re
import shutil
import sys

PYPROJECT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "pyproject.toml")
OPS = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt, "==": operator.eq, "!=": operator.ne}


def requires_python(path=PYPROJECT):
    with open(path) as fh:
        m = re.search(r'^requires-python\s*=\s*"([^"]+)"', fh.read(), re.MULTILINE)
    if not m:
        raise SystemExit("check_python: no requires-python in {}".format(path))
    return m.group(1)


def _version(text):
    return tuple(int(x) for x in text.split("."))


def allows(spec, version):
    """Does `version` (a tuple such as (3, 11, 7)) satisfy a specifier like '>=3.11,<3.12'?"""
    for clause in (c.strip() for c in spec.split(",") if c.strip()):
        m = re.match(r"^(>=|<=|==|!=|>|<)\s*(\d+(?:\.\d+)*)$", clause)
        if not m:
            raise SystemExit("check_python: unsupported requires-python clause {!r}".format(clause))
        want = _version(m.group(2))
        if not OPS[m.group(1)](tuple(version[: len(want)]), want):
            return False
    return True


def fitting_pythons(spec):
    """`pythonX.Y` executables on PATH whose X.Y the range allows."""
    found = []
    which = getattr(shutil, "which", None) or (lambda name: None)  # Python 2 has no shutil.which
    for minor in range(6, 20):
        exe = which("python3.{}".format(minor))
        if exe and allows(spec, (3, minor, 0)) and allows(spec, (3, minor, 99)):
            found.append(exe)
    return found


def message(spec, version, executable, candidates):
    have = ".".join(str(x) for x in version[:3])
    lines = ["make setup: Ladder needs Python {} (requires-python in pyproject.toml); "
             "{} is Python {}.".format(spec, executable, have)]
    if candidates:
        lines.append("  Found {} on PATH: run `make setup PYTHON={}`.".format(
            candidates[0], os.path.basename(candidates[0])))
    else:
        lines.append("  Install a Python in that range (e.g. `pyenv install 3.11`, `uv python install 3.11`, "
                     "or your distribution's python3.11), then run `make setup PYTHON=/path/to/python3.11`.")
    lines.append("  Why the range: the pins in pyproject.toml are the tested set; the outputs (checksums, "
                 "metrics) are only reproducible against it.")
    return "\n".join(lines)


def main():
    spec = requires_python()
    if allows(spec, sys.version_info[:3]):
        return 0
    sys.stderr.write(message(spec, sys.version_info, sys.executable, fitting_pythons(spec)) + "\n")
    return 1


if __name__ == "__main__":
    sys.exit(main())
