"""Ladder: calibrate, prune and evaluate one causal LM into a ladder of rungs, then route between them.

The modules at this level are the pipeline's stages, each run as `python -m pipeline.<stage>`
(see dvc.yaml): base, data, calibrate, teacher, prune, evaluate, report, speed, router, cascade,
escalate, compare, manifest, plus `params` (compose params.yaml) and `serve` (the reference runtime).

The subpackages are the library the stages use:
  common/      config schema, stage start-up and input checks, atomic writes, strict file readers,
               packaged assets, W&B tracking
  models/      loading model sources, checkpoints, cost (FLOPs, params) and measured speed
  pruning/     importance, granularities (one small object each), allocator, compensation,
               weight sparsity, healing
  evaluation/  lm-eval tasks (catalog, packaged redirection, ids), token budgets, text,
               stable splits, log-likelihood scoring and its lm-eval backend
  routing/     per-query outcomes, routing costs, risk models, policies (Pareto front, routing,
               escalation), cascade deferral and thresholds (Learn-then-Test), bootstrap intervals
  deploy/      the manifest schema, the runtime (verified files, strategies) and its bounded requests
"""
