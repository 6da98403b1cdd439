"""`python -m pipeline.params [overrides...]`: compose `conf/` with Hydra, validate, write params.yaml.

What `dvc exp run -S ...` does before running the stages; `make params` calls it so the committed
params.yaml that plain `dvc repro` reads stays equal to what `conf/` composes.
"""

from __future__ import annotations

import sys

import yaml

from pipeline.common.config import ConfigError, compose, validate


def main(argv: list[str] | None = None) -> int:
    """Compose conf/ (plus Hydra overrides), validate, write params.yaml."""
    import argparse

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. ladder=tiny seed=1")
    ap.add_argument("--out", default="params.yaml")
    args = ap.parse_args(argv)
    try:
        raw = compose(args.overrides)
        validate(raw)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    text = yaml.safe_dump(raw, sort_keys=False)
    from pipeline.common.atomic import atomic_write_text

    atomic_write_text(args.out, text)
    print(f"params: wrote {args.out} from conf/ {' '.join(args.overrides)}".rstrip())
    return 0


if __name__ == "__main__":
    sys.exit(main())
