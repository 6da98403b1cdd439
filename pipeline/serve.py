"""Reference runtime: load the manifest, answer multiple-choice queries the way the build decided.

Library:
    from pipeline.serve import LadderRuntime
    rt = LadderRuntime("artifacts/manifest.yaml")      # validates the manifest, checks every sha256
    a = rt.answer("Question: ...\\nAnswer:", [" yes", " no"], strategy="cascade")
    a.answer, a.choice, a.rung, a.confidence, a.cost, a.rungs_tried

Command line:
    python -m pipeline.serve --manifest artifacts/manifest.yaml --strategy router \\
        --context "Question: What do plants need?\\nAnswer:" --choices " sunlight" " salt"
    python -m pipeline.serve --strategy cascade --items artifacts/data/tasks.jsonl --split test

Strategies: `router` (the learned router picks one rung: the cheapest whose predicted risk of
being wrong where dense is right is below the certified threshold), `cascade` (cheapest rung
first, escalate while its deferral score is below the rung's threshold; a rung with no threshold
is skipped), `escalate` (route-then-escalate: the router's rung, then dense if that rung's
deferral risk is above the threshold), `rung=<name>` (always that rung). The task of a query
(`task=`, `--task`) is an input of the router and the deferral rule; an unknown or missing task
uses their task-free estimate. Rungs load lazily, on first use. Costs are in the
manifest's unit (ms of measured latency, or FLOPs/token) and count every rung run.
Scoring is the evaluation's (`pipeline/scoring.py`), so answers and confidences match it.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pipeline.common.assets import AssetError, sha256_file
from pipeline.deploy.manifest_schema import ManifestError, load_manifest


class ChecksumError(AssetError):
    """A file the manifest vouches for has a different sha256: refuse to serve it."""


@dataclass
class Answer:
    answer: int  # index into the choices
    choice: str
    rung: str  # the rung that answered
    confidence: float  # 1 - that rung's deferral risk (1.0 for dense and rungs without a deferral rule)
    cost: float  # in `unit`, every rung run
    relative_cost: float  # cost / dense's
    unit: str
    rungs_tried: list[str] = field(default_factory=list)
    router_risk: float | None = None  # router strategy: predicted P(chosen rung wrong, dense right)


class LadderRuntime:
    def __init__(self, manifest: str | Path = "artifacts/manifest.yaml", verify: bool = True):
        self.path = Path(manifest)
        self.manifest = load_manifest(self.path)
        self.root = self.path.parent
        self._models: dict[str, tuple] = {}
        self._router = None
        self._deferral = None
        if verify:
            self.verify()

    # --- integrity ----------------------------------------------------------

    def _check(self, path: Path, expected: str, what: str) -> None:
        if not path.exists():
            raise AssetError(f"{what}: {path} is missing (the manifest lists it); rebuild with `dvc repro`")
        actual = sha256_file(path)
        if actual != expected:
            raise ChecksumError(f"{what}: {path} has sha256 {actual}, but the manifest records {expected}; "
                                "the file was modified or corrupted after the build. Refusing to serve it: "
                                "restore it (`dvc checkout`) or rebuild (`dvc repro`)")

    def verify(self) -> None:
        """Check the sha256 of every rung's weights, the router and the cascade thresholds."""
        m = self.manifest
        for r in m.rungs:
            for name, digest in r.weights_sha256.items():
                self._check(self.root / r.path / name, digest, f"rung {r.name}")
        router_dir = self.root / m.router.path
        self._check(router_dir / m.router.weights, m.router.weights_sha256, "router weights")
        self._check(router_dir / m.router.config, m.router.config_sha256, "router config")
        self._check(self.root / m.cascade.path, m.cascade.sha256, "cascade thresholds")
        self._check(self.root / m.escalate.path, m.escalate.sha256, "route-then-escalate threshold")

    # --- rungs --------------------------------------------------------------

    def loaded(self) -> list[str]:
        return list(self._models)

    def _model(self, name: str):
        if name not in self._models:
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer

            path = self.root / self.manifest.rung(name).path
            model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
            self._models[name] = (model, AutoTokenizer.from_pretrained(path))
        return self._models[name]

    def score(self, rung: str, context: str, choices: list[str]) -> dict:
        """The evaluation's record for this query on one rung (answer and confidence signals)."""
        from pipeline.evaluate import record_for
        from pipeline.evaluation.scoring import encode_item, score_choices

        model, tok = self._model(rung)
        max_len = min(getattr(model.config, "max_position_embeddings", 2048), 4096)
        scored = score_choices(model, [encode_item(tok, context, choices, max_len)], progress=False)
        return record_for({"id": "", "task": "", "split": "", "gold": 0, "choices": choices}, scored[0])

    def _answer_of(self, record: dict) -> int:
        from pipeline.routing.outcomes import answer_of

        return answer_of(record, self.manifest.prediction)[0]

    def deferral(self):
        """The cascade's deferral rule (also route-then-escalate's), from its thresholds file."""
        if self._deferral is None:
            from pipeline.routing.deferral import Deferral

            self._deferral = Deferral.from_json(json.loads((self.root / self.manifest.cascade.path).read_text())["deferral"])
        return self._deferral

    def _deferral_risk(self, rung: str, record: dict, task: str | None) -> float:
        from pipeline.routing.deferral import record_signals

        d = self.deferral()
        return float(d.risk(rung, record_signals(record), d.task_index(task))[0])

    def _cost(self, rungs: list[str]) -> tuple[float, float]:
        return (sum(self.manifest.rung(r).routing_cost for r in rungs),
                sum(self.manifest.rung(r).relative_cost for r in rungs))

    # --- strategies ---------------------------------------------------------

    def route(self, context: str, choices: list[str], task: str | None = None,
              threshold: float | None = "manifest") -> tuple[str, dict[str, float]]:
        """The router's pick for a query, and its predicted risk for every candidate rung."""
        import numpy as np

        from pipeline.routing.features import Featurizer, query_text
        from pipeline.routing.policies import route
        from pipeline.routing.risk_models import load_router

        if self._router is None:
            model, meta = load_router(self.root / self.manifest.router.path)
            dense_dir = self.root / self.manifest.rung("dense").path
            kind = meta["features"]["kind"]
            self._router = (model, meta, Featurizer(kind, dense_dir if kind == "hidden_state" else None))
        model, meta, feat = self._router
        x = feat([query_text(context, choices)], batch_size=1).double().numpy()
        tasks = meta["tasks"]
        t_idx = np.asarray([tasks.index(task) if task in tasks else -1])
        cands = [meta["rungs"].index(r) for r in meta["candidates"]]
        risk = model.predict(x, t_idx) if cands else np.zeros((1, 0))
        t = meta["threshold"] if threshold == "manifest" else threshold
        k = int(route(risk, cands, -np.inf if t is None else t)[0])
        return meta["rungs"][k], {r: float(v) for r, v in zip(meta["candidates"], risk[0])}

    def answer(self, context: str, choices: list[str], strategy: str = "cascade", task: str | None = None) -> Answer:
        if len(choices) < 2:
            raise ValueError(f"a multiple-choice query needs at least 2 choices, got {len(choices)}")
        if strategy == "cascade":
            return self._cascade(context, choices, task)
        if strategy == "escalate":
            return self._escalate(context, choices, task)
        if strategy == "router":
            rung, risk = self.route(context, choices, task)
            a = self._single(rung, context, choices)
            a.router_risk = risk.get(rung)
            return a
        if strategy.startswith("rung="):
            return self._single(strategy.removeprefix("rung="), context, choices)
        raise ValueError(f"unknown strategy '{strategy}'; allowed: router, cascade, escalate, rung=<name> "
                         f"(rungs: {[r.name for r in self.manifest.rungs]})")

    def _single(self, rung: str, context: str, choices: list[str]) -> Answer:
        self.manifest.rung(rung)  # a clear KeyError for an unknown name
        rec = self.score(rung, context, choices)
        k = self._answer_of(rec)
        cost, rel = self._cost([rung])
        d = self.deferral()
        conf = 1.0 - self._deferral_risk(rung, rec, None) if d.kind == "signal" or rung in d.per_rung else 1.0
        return Answer(k, choices[k], rung, conf, cost, rel, self.manifest.costs.unit, [rung])

    def _cascade(self, context: str, choices: list[str], task: str | None) -> Answer:
        c = self.manifest.cascade
        tried = []
        for rung, threshold in zip(c.order, [*c.thresholds, None]):
            last = rung == c.order[-1]
            if threshold is None and not last:
                continue  # this rung can never answer: not run, not paid for
            rec = self.score(rung, context, choices)
            tried.append(rung)
            conf = 1.0 if last else 1.0 - self._deferral_risk(rung, rec, task)
            if last or conf >= threshold:
                k = self._answer_of(rec)
                cost, rel = self._cost(tried)
                return Answer(k, choices[k], rung, conf, cost, rel, self.manifest.costs.unit, tried)
        raise AssertionError("unreachable: the last rung always answers")

    def _escalate(self, context: str, choices: list[str], task: str | None) -> Answer:
        t = self.manifest.escalate.threshold
        start, risk = self.route(context, choices, task, threshold=t)
        tried = [start]
        rec = self.score(start, context, choices)
        conf = 1.0
        if start != "dense":
            post = self._deferral_risk(start, rec, task)
            conf = 1.0 - post
            if post > t:  # unsure: dense answers, and the query pays for both
                tried.append("dense")
                rec, conf = self.score("dense", context, choices), 1.0
        k = self._answer_of(rec)
        cost, rel = self._cost(tried)
        a = Answer(k, choices[k], tried[-1], conf, cost, rel, self.manifest.costs.unit, tried)
        a.router_risk = risk.get(start)
        return a


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipeline.serve", description=__doc__.split("\n")[0])
    ap.add_argument("--manifest", default="artifacts/manifest.yaml")
    ap.add_argument("--strategy", default="cascade", help="router | cascade | escalate | rung=<name>")
    ap.add_argument("--task", default=None, help="the query's task (e.g. arc_easy), if known")
    ap.add_argument("--context", help="the prompt of one query")
    ap.add_argument("--choices", nargs="+", help="its answer choices")
    ap.add_argument("--items", help="a tasks.jsonl of queries to answer (e.g. artifacts/data/tasks.jsonl)")
    ap.add_argument("--split", default=None, help="with --items: only this split (router_train|calibration|test)")
    ap.add_argument("--limit", type=int, default=None)
    args = ap.parse_args(argv)
    try:
        rt = LadderRuntime(args.manifest)
    except (ManifestError, AssetError) as exc:
        print(f"serve: {exc}", file=sys.stderr)
        return 2
    if args.items:
        items = [json.loads(x) for x in Path(args.items).read_text().splitlines()]
        items = [it for it in items if args.split is None or it["split"] == args.split][:args.limit]
        right, cost = 0, 0.0
        for it in items:
            a = rt.answer(it["context"], it["choices"], args.strategy, it.get("task"))
            right += a.answer == it["gold"]
            cost += a.relative_cost
            print(json.dumps({"id": it["id"], **asdict(a), "correct": a.answer == it["gold"]}))
        if items:
            print(f"serve: {len(items)} queries, accuracy {right / len(items):.3f}, mean cost "
                  f"{cost / len(items):.3f}x dense ({args.strategy})", file=sys.stderr)
        return 0
    if not args.context or not args.choices:
        ap.error("give --context and --choices, or --items")
    try:
        print(json.dumps(asdict(rt.answer(args.context, args.choices, args.strategy, args.task)), indent=2))
    except (ValueError, KeyError) as exc:
        print(f"serve: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
