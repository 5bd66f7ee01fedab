"""Test-suite settings.

``TRITON_INTERPRET=1`` makes Triton run its kernels on CPU tensors (with NumPy), so the fused
token-statistics kernels (``workbench.triton_stats``) are tested here without a GPU. Triton
reads it when a kernel is defined, so it is set before anything imports the workbench. It
changes nothing else: ``impl="auto"`` still uses the PyTorch path on CPU.
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")
