"""dvc.yaml declares every module a stage imports, and no code it does not.

Each stage's imports are derived statically: from the module its `cmd` runs (`-m pipeline.<stage>`),
every `import pipeline...` / `from pipeline... import ...` anywhere in the file (function-level
imports included, since stages import heavy modules late), followed transitively, with the package
`__init__.py` files those imports execute. A dep may be the file or a directory holding it.
Nothing is listed by hand here: a new module or stage is checked as soon as it exists.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO

PACKAGE = "pipeline"


def stages() -> dict[str, dict]:
    """Stage name -> its definition (the `do` body for foreach stages), from dvc.yaml."""
    raw = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    return {name: body.get("do", body) for name, body in raw.items()}


def stage_module(cmd: str) -> str:
    m = re.search(r"-m\s+(" + PACKAGE + r"(?:\.\w+)+)", cmd)
    assert m, f"cmd does not run a {PACKAGE} module: {cmd!r}"
    return m.group(1)


def module_file(module: str) -> Path | None:
    base = REPO.joinpath(*module.split("."))
    for f in (base.with_suffix(".py"), base / "__init__.py"):
        if f.is_file():
            return f
    return None


def module_name(path: Path) -> str:
    rel = path.relative_to(REPO).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def imported_modules(path: Path) -> set[str]:
    """Project modules a file imports, anywhere in it (module level or inside functions)."""
    this = module_name(path)
    package = this if path.name == "__init__.py" else this.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative import
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join([*base, *([node.module] if node.module else [])])
            else:
                source = node.module or ""
            found.add(source)
            # `from pipeline.routing import metrics` imports the submodule pipeline.routing.metrics
            found.update(f"{source}.{a.name}" for a in node.names if module_file(f"{source}.{a.name}"))
    project = set()
    for mod in found:
        if mod == PACKAGE or mod.startswith(PACKAGE + "."):
            parts = mod.split(".")
            # Importing a.b.c runs a/__init__.py and a/b/__init__.py first.
            project.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    return {m for m in project if module_file(m)}


def has_code(path: Path) -> bool:
    """False for a file that is only a docstring (an empty package marker changes no behaviour)."""
    body = ast.parse(path.read_text()).body
    if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant):
        body = body[1:]
    return bool(body)


def import_closure(module: str) -> dict[Path, list[str]]:
    """Every project file a stage module executes -> the import chain that reaches it."""
    chains: dict[str, list[str]] = {module: [module]}
    todo = [module]
    for parent in range(1, len(module.split("."))):
        pkg = ".".join(module.split(".")[:parent])
        chains.setdefault(pkg, [module, pkg])
        todo.append(pkg)
    while todo:
        mod = todo.pop()
        for dep in sorted(imported_modules(module_file(mod))):
            if dep not in chains:
                chains[dep] = [*chains[mod], dep]
                todo.append(dep)
    return {module_file(m).relative_to(REPO): chain for m, chain in chains.items() if has_code(module_file(m))}


def covers(dep: str, path: Path) -> bool:
    dep_path = Path(dep.rstrip("/"))
    return path == dep_path or dep_path in path.parents


def code_deps(deps: list[str]) -> list[str]:
    return [d for d in deps if Path(d).parts and Path(d).parts[0] == PACKAGE]


@pytest.mark.parametrize("name", list(stages()))
def test_stage_declares_every_module_it_imports(name):
    body = stages()[name]
    deps = [d for d in body.get("deps", []) if isinstance(d, str)]
    closure = import_closure(stage_module(body["cmd"]))
    missing = {p: chain for p, chain in closure.items() if not any(covers(d, p) for d in deps)}
    unused = [d for d in code_deps(deps) if not any(covers(d, p) for p in closure)]
    lines = [f"  add `{p}` (imported via {' -> '.join(chain)})" for p, chain in sorted(missing.items())]
    lines += [f"  remove `{d}` (the stage never imports it, so editing it reruns the stage for nothing)"
              for d in unused]
    if lines:
        pytest.fail(f"dvc.yaml stage '{name}' deps disagree with its imports:\n" + "\n".join(lines), pytrace=False)


def test_the_derivation_follows_function_level_and_submodule_imports():
    # The check can fail: evaluate imports cost.py inside main() and `from pipeline.routing import ...`
    # forms name submodules; both must be found.
    closure = import_closure("pipeline.evaluate")
    assert Path("pipeline/models/cost.py") in closure and Path("pipeline/common/config.py") in closure
    assert Path("pipeline/routing/metrics.py") in import_closure("pipeline.cascade")
    assert not covers("pipeline/models", Path("pipeline/modelsx/a.py")) and covers("pipeline/models/", Path("pipeline/models/a.py"))
