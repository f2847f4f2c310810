"""snn-harness: accuracy / sparsity / energy trade-offs of spiking neural networks.

Importing this package is cheap on purpose: torch, lightning and mlflow are imported lazily by the
modules that need them, so ``harness --help`` and ``harness ls`` answer at once.
"""

__version__ = "0.1.0"
