"""Real third-party attention kernels declared as flashproof Targets, for the GPU runs (docs/peers.md).

One module per kernel, each with a zero-argument factory ``target()`` (or one per backend) that
``flashproof check`` / ``pytest --flashproof-target`` load as ``benchmarks.peers.<module>:<factory>``
from the repository root. Nothing heavy is imported until a factory runs; a missing package or GPU
is a TargetLoadError that says what to install or where to run (README.md beside this file).
"""
__all__: list = []
