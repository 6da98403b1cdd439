"""Reference runtime: load the manifest, answer multiple-choice queries the way the build decided.

    from pipeline.serve import LadderRuntime           # (defined here; pipeline.serve is the CLI)
    rt = LadderRuntime("artifacts/manifest.yaml")      # validates the manifest, checks every file
    a = rt.answer("Question: ...\\nAnswer:", [" yes", " no"], strategy="cascade", task="arc_easy")
    a.answer, a.choice, a.rung, a.confidence, a.cost, a.rungs_tried, a.context_tokens_cut

It trusts only what it verified:
- every file a rung is loaded from (config, generation config, tokenizer, every weights shard)
  has the sha256 the manifest records, and no file the build did not write sits beside them;
  the router's weights and config, the cascade's thresholds file (which holds the deferral rule)
  and route-then-escalate's thresholds file are checked the same way. A rung is checked again
  (file sizes and times; rehashed if they moved) just before it loads, and the router's files
  before the router loads;
- the cascade's order, deferral rule, thresholds and prediction rule, the router's threshold,
  candidates, risk model and costs, and route-then-escalate's threshold and certificate, are read
  from those checked files; the copies in the manifest must agree, or the runtime refuses to start;
- paths stay inside the manifest's directory (symlinks resolved for directories);
- weights load from safetensors only (`use_safetensors=True`).

Requests are bounded by the `serve` limits the manifest carries (`LadderRuntime(..., limits=...)`
overrides them): see `pipeline/deploy/requests.py`.

Strategies: `router` (the learned router picks one rung: the cheapest candidate whose predicted
risk against dense, router.json's `risk`, is <= the certified threshold), `cascade` (cheapest rung
first, escalate while 1 - its deferral risk is below the rung's threshold; a rung with no
threshold is skipped), `escalate` (route-then-escalate: the router's rung, then dense if that
rung's deferral risk is above the deferral threshold), `rung=<name>` (always that rung). The task of a
query (`task=`) is an input of the router and the deferral rule; an unknown or missing task uses
their task-free estimate. Rungs load lazily, on first use. Costs are in the manifest's unit
(`costs.unit`: FLOPs per query by default, ms under `cost.kind=latency`) and count every rung run.
Scoring is the evaluation's (`pipeline/evaluation/scoring.py`), so answers and confidences match it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

from pipeline.common.assets import AssetError, sha256_file
from pipeline.common.config import ServeConfig
from pipeline.common.formats import check_safetensors, read_json
from pipeline.deploy.manifest_schema import ManifestError, load_manifest
from pipeline.deploy.requests import Request, RequestError, check_request, encode_request
from pipeline.models.checkpoint import DOCUMENTATION, ChecksumError, check_rung_files, restore_hint, shown

__all__ = ["Answer", "ChecksumError", "LadderRuntime", "ManifestError", "RequestError"]

SIGNALS = ("msp", "margin", "entropy", "msp_norm", "margin_norm", "entropy_norm")
STRATEGIES = ("router", "cascade", "escalate")


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
    router_risk: float | None = None  # router, escalate: the chosen rung's predicted risk (router.json `risk`)
    context_tokens_cut: int = 0  # tokens cut from the left of the context to fit the limits


@dataclass(frozen=True)
class CascadeRule:
    """The cascade as the checked thresholds file states it."""

    order: list[str]
    thresholds: list[float | None]
    deferral: object  # pipeline.routing.deferral.Deferral: P(rung wrong, dense right) from its signals + task
    signal: str
    method: str
    prediction: str


@dataclass(frozen=True)
class EscalateRule:
    """Route-then-escalate as its checked thresholds file states it."""

    threshold: float | None  # the router's risk threshold; null: always dense
    candidates: list[str]
    deferral_threshold: float | None  # escalate when the rung's deferral risk is above it


def _stat_key(path: Path) -> tuple:
    st = path.stat()
    return st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev


def _finite_or_none(x) -> bool:
    return x is None or (isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x))


class LadderRuntime:
    def __init__(self, manifest: str | Path = "artifacts/manifest.yaml", limits: ServeConfig | None = None,
                 device: str = "auto", dtype: str | None = None):
        """`device`: auto | cpu | cuda[:N]; `dtype`: float32 | bfloat16 | float16, or None for the
        dtype each rung is stored in (what its evaluation ran in)."""
        if device != "auto" and device != "cpu":  # a missing GPU fails here, before any file is read
            from pipeline.common.device import resolve_device

            resolve_device(device)
        self._placement = SimpleNamespace(device=device, dtype=dtype)
        self.path = Path(manifest)
        self.manifest = load_manifest(self.path)
        self.root = self.path.parent
        self.limits = limits if limits is not None else self.manifest.serve
        m = self.manifest
        self._rung_dirs = {r.name: self._inside(r.path, f"rung {r.name}", directory=True) for r in m.rungs}
        router_dir = self._inside(m.router.path, "router", directory=True)
        self._router_files = (router_dir / m.router.weights, router_dir / m.router.config)
        self._cascade_file = self._inside(m.cascade.path, "cascade", directory=False)
        self._escalate_file = self._inside(m.escalate.path, "escalate", directory=False)
        self._seen: dict[Path, tuple] = {}  # file -> (size, mtime, inode, device) when its sha256 matched
        self._models: dict[str, tuple] = {}
        self._router = None
        self.verify()
        self.cascade = self._cascade_rule()
        self.router_meta = self._router_settings()
        self.escalate = self._escalate_rule()

    # --- integrity ----------------------------------------------------------

    def _inside(self, rel: str, what: str, directory: bool) -> Path:
        """`rel` under the manifest's directory, refusing anything that resolves outside it. A file's
        own name is not resolved: with DVC's symlink cache, files are links into `.dvc/cache`."""
        path = self.root / rel
        top = self.root.resolve()
        resolved = (path if directory else path.parent).resolve()
        if resolved != top and top not in resolved.parents:
            raise ManifestError(f"{self.path}: {what} path {rel!r} resolves to {resolved}, outside the manifest's "
                                f"directory {top}; refusing to load from there")
        return path

    def _check_file(self, path: Path, expected: str, what: str) -> None:
        restore = f"restore it with `dvc checkout --force {shown(path)}` or rebuild it with `dvc repro`"
        if not path.is_file():
            raise AssetError(f"{what}: {shown(path)} is missing (the manifest lists it); {restore}")
        if path.suffix == ".safetensors":
            try:
                check_safetensors(path)
            except AssetError as exc:
                raise AssetError(f"{what}: {exc}; {restore}") from None
        actual = sha256_file(path)
        if actual != expected:
            raise ChecksumError(f"{what}: {shown(path)} has sha256 {actual}, but the manifest records {expected}: "
                                f"modified or corrupted after the build; refusing to serve it; {restore}")
        self._seen[path] = _stat_key(path)

    def _check_rung(self, name: str) -> None:
        rung_dir = self._rung_dirs[name]
        digests = self.manifest.rung(name).files_sha256
        check_rung_files(rung_dir, digests, f"rung {name}", restore_hint(rung_dir))
        for f in digests:
            self._seen[rung_dir / f] = _stat_key(rung_dir / f)

    def _unchanged(self, paths: list[Path]) -> bool:
        try:
            return all(self._seen.get(p) == _stat_key(p) for p in paths)
        except OSError:
            return False

    def verify(self) -> None:
        """Check the sha256 of every file of every rung, the router and both thresholds files."""
        m = self.manifest
        for r in m.rungs:
            self._check_rung(r.name)
        self._check_file(self._router_files[0], m.router.weights_sha256, "router weights")
        self._check_file(self._router_files[1], m.router.config_sha256, "router config")
        self._check_file(self._cascade_file, m.cascade.sha256, "cascade thresholds")
        self._check_file(self._escalate_file, m.escalate.sha256, "route-then-escalate thresholds")

    def _disagree(self, key: str, in_manifest, in_file, file: Path) -> ManifestError:
        return ManifestError(f"{self.path}: {key} is {in_manifest!r} in the manifest but {in_file!r} in "
                             f"{shown(file)} (the sha256-checked file the runtime uses); refusing to serve a manifest "
                             "that disagrees with its files: rebuild it with `dvc repro manifest`")

    def _agree(self, pairs: list[tuple[str, object, object]], file: Path) -> None:
        for key, mine, theirs in pairs:
            if mine != theirs:
                raise self._disagree(key, mine, theirs, file)

    def _cascade_rule(self) -> CascadeRule:
        from pipeline.routing.deferral import Deferral

        f = self._cascade_file
        raw = read_json(f)
        try:
            d = raw["deferral"]
            rule = CascadeRule(list(raw["order"]), list(raw["thresholds"]), Deferral.from_json(d), d["signal"],
                               raw["method"], raw["prediction"])
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise AssetError(f"{shown(f)}: not a cascade thresholds file ({type(exc).__name__}: {exc})") from None
        names = [r.name for r in self.manifest.rungs]
        dfr = rule.deferral
        ok = (all(isinstance(r, str) and r in names for r in rule.order) and rule.order[-1:] == ["dense"]
              and len(rule.thresholds) == len(rule.order) - 1 and rule.signal in SIGNALS
              and dfr.kind in ("learned", "signal") and isinstance(dfr.tasks, list)
              and rule.prediction in ("acc", "acc_norm") and all(map(_finite_or_none, rule.thresholds)))
        if not ok:
            raise AssetError(f"{shown(f)}: inconsistent cascade (order {rule.order}, deferral {dfr.kind!r}, signal "
                             f"{rule.signal!r}, thresholds {rule.thresholds}, prediction {rule.prediction!r}; rungs "
                             f"{names})")
        answering = [r for r, t in zip(rule.order, rule.thresholds) if t is not None]
        lacking = [r for r in answering if dfr.kind == "learned" and r not in dfr.per_rung]
        if lacking:
            raise AssetError(f"{shown(f)}: the deferral model has no rule for cascade rungs {lacking}")
        c = self.manifest.cascade
        self._agree([("cascade.order", c.order, rule.order), ("cascade.deferral", c.deferral, dfr.kind),
                     ("cascade.signal", c.signal, rule.signal), ("cascade.thresholds", c.thresholds, rule.thresholds),
                     ("cascade.method", c.method, rule.method), ("cascade.epsilon", c.epsilon, raw.get("epsilon")),
                     ("cascade.delta", c.delta, raw.get("delta")),
                     ("cascade.calibration_size", c.calibration_size, raw.get("n_calibration")),
                     ("prediction", self.manifest.prediction, rule.prediction)], f)
        return rule

    def _router_settings(self) -> dict:
        from pipeline.routing.risk_models import RISKS

        f = self._router_files[1]
        meta = read_json(f)
        try:
            rungs, candidates, threshold = meta["rungs"], meta["candidates"], meta["threshold"]
            cost, kind, model, tasks = meta["cost"], meta["features"]["kind"], meta["model"]["name"], meta["tasks"]
            relative = cost["relative"]
        except (KeyError, TypeError) as exc:
            raise AssetError(f"{shown(f)}: not a router config (missing {exc})") from None
        if meta.get("risk", "harm") not in RISKS:
            raise AssetError(f"{shown(f)}: router risk {meta.get('risk')!r} is not one of {list(RISKS)}")
        names = {r.name: r for r in self.manifest.rungs}
        if not (isinstance(rungs, list) and rungs and rungs[0] == "dense" and all(r in names for r in rungs)
                and isinstance(relative, list) and len(relative) == len(rungs)
                and all(isinstance(c, (int, float)) for c in relative)
                and isinstance(candidates, list) and all(r in rungs[1:] for r in candidates)
                and isinstance(tasks, list) and _finite_or_none(threshold)):
            raise AssetError(f"{shown(f)}: router rungs {rungs} / candidates {candidates} / costs {relative} / threshold "
                             f"{threshold!r} do not fit the manifest's rungs {list(names)}")
        r, costs = self.manifest.router, self.manifest.costs
        pairs = [("router.threshold", r.threshold, threshold), ("router.features", r.features, kind),
                 ("router.candidates", r.candidates, candidates), ("router.model", r.model, model),
                 ("router.risk", r.risk, meta.get("risk", "harm")),
                 ("router.target", r.target, meta.get("target")), ("costs.kind", costs.kind, cost.get("kind")),
                 ("costs.unit", costs.unit, cost.get("unit"))]
        if r.certificate is not None:
            pairs += [("router.certificate.epsilon", r.certificate.epsilon, meta.get("epsilon")),
                      ("router.certificate.delta", r.certificate.delta, meta.get("delta"))]
        self._agree(pairs, f)
        for name, c in zip(rungs, relative):
            if not math.isclose(names[name].relative_cost, c, rel_tol=1e-9, abs_tol=1e-12):
                raise self._disagree(f"rungs[{name}].relative_cost", names[name].relative_cost, c, f)
        return meta

    def _escalate_rule(self) -> EscalateRule:
        f = self._escalate_file
        raw = read_json(f)
        try:
            # ladder-escalate/1 files used one number for both thresholds
            rule = EscalateRule(raw["threshold"], list(raw["candidates"]), raw.get("deferral_threshold", raw["threshold"]))
            epsilon, delta, n_cal = raw["epsilon"], raw["delta"], raw["n_calibration"]
        except (KeyError, TypeError) as exc:
            raise AssetError(f"{shown(f)}: not a route-then-escalate thresholds file (missing {exc})") from None
        if not (_finite_or_none(rule.threshold) and _finite_or_none(rule.deferral_threshold)
                and (rule.threshold is None) == (rule.deferral_threshold is None)):
            raise AssetError(f"{shown(f)}: threshold {rule.threshold!r} / deferral_threshold {rule.deferral_threshold!r} "
                             "are not both finite numbers or both null")
        if rule.candidates != self.router_meta["candidates"]:
            raise AssetError(f"{shown(f)}: built for router candidates {rule.candidates}, but the router's are "
                             f"{self.router_meta['candidates']}: rebuild it with `dvc repro escalate`")
        d = self.cascade.deferral
        lacking = [r for r in rule.candidates if d.kind == "learned" and r not in d.per_rung]
        if lacking:
            raise AssetError(f"{shown(self._cascade_file)}: the deferral model has no rule for router candidates "
                             f"{lacking}, which route-then-escalate starts at: rebuild with `dvc repro cascade`")
        e = self.manifest.escalate
        self._agree([("escalate.threshold", e.threshold, rule.threshold),
                     ("escalate.deferral_threshold", e.deferral_threshold, rule.deferral_threshold),
                     ("escalate.certificate.epsilon", e.certificate.epsilon, epsilon),
                     ("escalate.certificate.delta", e.certificate.delta, delta),
                     ("escalate.certificate.calibration_size", e.certificate.calibration_size, n_cal)], f)
        return rule

    # --- rungs --------------------------------------------------------------

    def loaded(self) -> list[str]:
        return list(self._models)

    def _model(self, name: str):
        if name not in self._models:
            from transformers import AutoTokenizer

            from pipeline.models.loading import load_causal_lm, stored_dtype

            path = self._rung_dirs[name]
            digests = self.manifest.rung(name).files_sha256
            extra = {p.name for p in path.iterdir()} - set(digests) - DOCUMENTATION if path.is_dir() else set()
            if extra or not self._unchanged([path / f for f in digests]):
                self._check_rung(name)  # something moved since start-up: check again before loading
            dtype = self._placement.dtype or stored_dtype(path)
            model = load_causal_lm(path, self._placement, dtype=dtype)
            self._models[name] = (model, AutoTokenizer.from_pretrained(path))
        return self._models[name]

    def _score(self, rung: str, req: Request) -> tuple[dict, int]:
        """The evaluation's record for this query on one rung, and the context tokens cut."""
        from pipeline.evaluate import record_for
        from pipeline.evaluation.scoring import Encoded, score_choices

        model, tok = self._model(rung)
        max_positions = int(getattr(model.config, "max_position_embeddings", 2048))
        enc = encode_request(tok, req, self.limits, max_positions)
        scored = score_choices(model, [Encoded(enc.context, enc.continuations)], progress=False)
        record = record_for({"id": "", "task": "", "split": "", "gold": 0, "choices": list(req.choices)}, scored[0])
        return record, enc.context_tokens_cut

    def score(self, rung: str, context: str, choices: list[str]) -> dict:
        """The evaluation's record for this query on one rung (answer and confidence signals)."""
        self._rung(rung)
        return self._score(rung, check_request(context, choices, self.limits))[0]

    def _rung(self, name: str) -> None:
        if name not in self._rung_dirs:
            raise ValueError(f"no rung '{name}' in the manifest; rungs: {list(self._rung_dirs)}")

    def _answer_of(self, record: dict) -> int:
        from pipeline.routing.outcomes import answer_of

        return answer_of(record, self.cascade.prediction)[0]

    def _deferral_risk(self, rung: str, record: dict, task: str | None) -> float:
        from pipeline.routing.deferral import record_signals

        d = self.cascade.deferral
        return float(d.risk(rung, record_signals(record), d.task_index(task))[0])

    def _cost(self, rungs: list[str]) -> tuple[float, float]:
        return (sum(self.manifest.rung(r).routing_cost for r in rungs),
                sum(self.manifest.rung(r).relative_cost for r in rungs))

    # --- strategies ---------------------------------------------------------

    def route(self, context: str, choices: list[str], task: str | None = None) -> tuple[str, dict[str, float]]:
        """The router's pick for a query, and its predicted risk for every candidate rung."""
        return self._route(check_request(context, choices, self.limits, task), self.router_meta["threshold"])

    def _load_router(self):
        from safetensors.numpy import load_file

        from pipeline.routing.features import Featurizer
        from pipeline.routing.risk_models import restore_router

        if self._router is None:
            if not self._unchanged(list(self._router_files)):
                for path, digest, what in zip(self._router_files, (self.manifest.router.weights_sha256,
                                                                   self.manifest.router.config_sha256),
                                              ("router weights", "router config")):
                    self._check_file(path, digest, what)
            meta = self.router_meta  # the checked copy, not a second read
            model = restore_router(meta, load_file(str(self._router_files[0])), shown(self._router_files[1]))
            kind = meta["features"]["kind"]
            if kind == "hidden_state":
                self._check_rung("dense")
            self._router = (model, meta, Featurizer(kind, self._rung_dirs["dense"] if kind == "hidden_state" else None,
                                                   placement=self._placement))
        return self._router

    def _route(self, req: Request, threshold: float | None) -> tuple[str, dict[str, float]]:
        import numpy as np

        from pipeline.routing.features import query_text
        from pipeline.routing.policies import route
        from pipeline.routing.risk_models import risk_of

        model, meta, feat = self._load_router()
        cands = [meta["rungs"].index(r) for r in meta["candidates"]]
        if cands:
            x = feat([query_text(req.context, list(req.choices))], batch_size=1).double().numpy()
            t_idx = np.asarray([meta["tasks"].index(req.task) if req.task in meta["tasks"] else -1])
            risk = risk_of(model.predict(x, t_idx), meta.get("risk", "harm"))  # ladder-router/2 files: harm
        else:
            risk = np.zeros((1, 0))
        k = int(route(risk, cands, -np.inf if threshold is None else threshold)[0])
        return meta["rungs"][k], {r: float(v) for r, v in zip(meta["candidates"], risk[0])}

    def answer(self, context: str, choices: list[str], strategy: str = "cascade", task: str | None = None) -> Answer:
        """Answer one query; RequestError (a ValueError) if it breaks a limit, ValueError for a bad strategy."""
        self.check_strategy(strategy)
        return self.answer_request(check_request(context, choices, self.limits, task), strategy)

    def check_strategy(self, strategy: str) -> None:
        if strategy in STRATEGIES:
            return
        if isinstance(strategy, str) and strategy.startswith("rung="):
            self._rung(strategy.removeprefix("rung="))
            return
        raise ValueError(f"unknown strategy {strategy!r}; allowed: router, cascade, escalate, rung=<name> "
                         f"(rungs: {list(self._rung_dirs)})")

    def answer_request(self, req: Request, strategy: str = "cascade") -> Answer:
        self.check_strategy(strategy)
        if strategy == "cascade":
            return self._cascade(req)
        if strategy == "escalate":
            return self._escalate(req)
        if strategy == "router":
            rung, risk = self._route(req, self.router_meta["threshold"])
            a = self._single(rung, req)
            a.router_risk = risk.get(rung)
            return a
        return self._single(strategy.removeprefix("rung="), req)

    def _single(self, rung: str, req: Request) -> Answer:
        rec, cut = self._score(rung, req)
        k = self._answer_of(rec)
        cost, rel = self._cost([rung])
        d = self.cascade.deferral
        # A rung's own confidence, task-free: the same figure whichever way the rung was chosen.
        conf = 1.0 - self._deferral_risk(rung, rec, None) if d.kind == "signal" or rung in d.per_rung else 1.0
        return Answer(k, req.choices[k], rung, conf, cost, rel, self.manifest.costs.unit, [rung],
                      context_tokens_cut=cut)

    def _cascade(self, req: Request) -> Answer:
        c = self.cascade
        tried = []
        for rung, threshold in zip(c.order, [*c.thresholds, None]):
            last = rung == c.order[-1]
            if threshold is None and not last:
                continue  # this rung can never answer: not run, not paid for
            rec, cut = self._score(rung, req)
            tried.append(rung)
            conf = 1.0 if last else 1.0 - self._deferral_risk(rung, rec, req.task)
            if last or conf >= threshold:
                k = self._answer_of(rec)
                cost, rel = self._cost(tried)
                return Answer(k, req.choices[k], rung, conf, cost, rel, self.manifest.costs.unit, tried,
                              context_tokens_cut=cut)
        raise AssertionError("unreachable: the last rung always answers")

    def _escalate(self, req: Request) -> Answer:
        t = self.escalate.threshold
        start, risk = self._route(req, t)
        tried = [start]
        rec, cut = self._score(start, req)
        conf = 1.0
        if start != "dense":  # t is a number here: with t null every query starts (and ends) at dense
            post = self._deferral_risk(start, rec, req.task)
            conf = 1.0 - post
            if post > self.escalate.deferral_threshold:  # unsure: dense answers, and the query pays for both
                tried.append("dense")
                (rec, cut), conf = self._score("dense", req), 1.0
        k = self._answer_of(rec)
        cost, rel = self._cost(tried)
        a = Answer(k, req.choices[k], tried[-1], conf, cost, rel, self.manifest.costs.unit, tried,
                   context_tokens_cut=cut)
        a.router_risk = risk.get(start)
        return a
