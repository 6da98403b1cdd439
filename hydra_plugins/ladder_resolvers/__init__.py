"""Ladder's OmegaConf resolvers, registered when Hydra scans for plugins.

DVC's Hydra integration (`dvc exp run`) scans `hydra_plugins` under the repo root
before composing `conf/`, so resolvers registered here work there exactly as in
`python -m pipeline.common.config`.
"""

from pipeline.common.config import register_resolvers

register_resolvers()
