"""Reference runtime, command line: answer multiple-choice queries from the deployment manifest.

Library (the runtime itself lives in `pipeline/deploy/runtime.py`):
    from pipeline.serve import LadderRuntime
    rt = LadderRuntime("artifacts/manifest.yaml")      # validates the manifest, checks every file's sha256
    a = rt.answer("Question: ...\\nAnswer:", [" yes", " no"], strategy="cascade", task="arc_easy")
    a.answer, a.choice, a.rung, a.confidence, a.cost, a.rungs_tried, a.context_tokens_cut

Command line:
    python -m pipeline.serve --manifest artifacts/manifest.yaml --strategy router \\
        --task arc_easy --context "Question: What do plants need?\\nAnswer:" --choices " sunlight" " salt"
    python -m pipeline.serve --request '{"context": "Question: ...\\nAnswer:", "choices": [" a", " b"], "task": "arc_easy"}'
    python -m pipeline.serve --strategy escalate --items artifacts/data/tasks.jsonl --split test

Strategies: `router`, `cascade`, `escalate` (route-then-escalate), `rung=<name>` (see the
runtime). The query's task (`--task`, the `task` key of `--request`, each item's own task with
`--items`) is an input of the router and the deferral rule; without it they use their task-free
estimate. Request limits (context, choice and request tokens, number of choices, bytes) come from
the manifest's `serve` section, written from the `serve` config group. Exit status 2 on a refused
manifest, file or request.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict

from pipeline.common.assets import AssetError
from pipeline.deploy.manifest_schema import ManifestError
from pipeline.deploy.requests import RequestError, check_request, parse_request
from pipeline.deploy.runtime import Answer, ChecksumError, LadderRuntime
from pipeline.evaluation.splits import SPLITS

__all__ = ["Answer", "ChecksumError", "LadderRuntime", "main"]


def _count(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {n}")
    return n


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipeline.serve", description=__doc__.split("\n")[0])
    ap.add_argument("--manifest", default="artifacts/manifest.yaml")
    ap.add_argument("--strategy", default="cascade", help="router | cascade | escalate | rung=<name>")
    ap.add_argument("--task", default=None, help="the query's task (e.g. arc_easy), if known")
    ap.add_argument("--context", help="the prompt of one query")
    ap.add_argument("--choices", nargs="+", help="its answer choices")
    ap.add_argument("--request", help='one query as JSON: {"context": "...", "choices": ["...", "..."], '
                                      '"task": "..." (optional)}')
    ap.add_argument("--items", help="a tasks.jsonl of queries to answer (e.g. artifacts/data/tasks.jsonl)")
    ap.add_argument("--split", choices=SPLITS, default=None, help="with --items: only this split")
    ap.add_argument("--limit", type=_count, default=None, help="with --items: answer at most this many")
    ap.add_argument("--device", default="auto",
                    help="auto (a GPU when torch sees one) | cpu | cuda | cuda:N")
    ap.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                    help="default: each rung's stored dtype (what its evaluation ran in)")
    args = ap.parse_args(argv)
    given = [x for x in ("context", "request", "items") if getattr(args, x)]
    if len(given) != 1 or bool(args.context) != bool(args.choices):
        ap.error("give --context and --choices, or --request, or --items")
    if (args.split or args.limit) and not args.items:
        ap.error("--split and --limit apply to --items")
    if args.task is not None and not args.context:
        ap.error("--task applies to --context (a --request carries its own \"task\", each of --items its own)")
    try:
        rt = LadderRuntime(args.manifest, device=args.device, dtype=args.dtype)
        rt.check_strategy(args.strategy)
        if args.items:
            return _answer_items(rt, args)
        req = (parse_request(args.request, rt.limits) if args.request
               else check_request(args.context, args.choices, rt.limits, args.task))
        print(json.dumps(asdict(rt.answer_request(req, args.strategy)), indent=2))
    except (ManifestError, AssetError, RequestError, ValueError) as exc:
        print(f"serve: {exc}", file=sys.stderr)
        return 2
    return 0


def _answer_items(rt: LadderRuntime, args) -> int:
    from pipeline.evaluation.items import read_items

    items = [it for it in read_items(args.items) if args.split is None or it["split"] == args.split]
    if not items:
        raise AssetError(f"{args.items} has no items in split {args.split!r}")
    items = items[:args.limit]
    # Every query checked before the first is answered: a bad item fails the run at once, named.
    requests = []
    for it in items:
        try:
            requests.append(check_request(it["context"], it["choices"], rt.limits, it["task"]))
        except RequestError as exc:
            raise RequestError(f"{args.items}: item {it['id']}: {exc}") from None
    right, cost = 0, 0.0
    for it, req in zip(items, requests):
        a = rt.answer_request(req, args.strategy)
        right += a.answer == it["gold"]
        cost += a.relative_cost
        print(json.dumps({"id": it["id"], **asdict(a), "correct": a.answer == it["gold"]}))
    print(f"serve: {len(items)} queries, accuracy {right / len(items):.3f}, mean cost "
          f"{cost / len(items):.3f}x dense ({args.strategy})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
