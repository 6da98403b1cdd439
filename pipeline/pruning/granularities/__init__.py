"""The built-in granularities, coarse to fine. Importing this package registers them."""

from pipeline.pruning.granularities import heads, hidden, layers, mlp  # noqa: F401
