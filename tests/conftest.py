"""Test-suite settings.

Without a CUDA GPU, ``TRITON_INTERPRET=1`` makes Triton run its kernels on CPU tensors (with
NumPy), so the fused token-statistics kernels (``workbench.models.triton_stats``) are tested here too;
with a GPU, the same tests run the compiled kernels on it. Triton reads the variable when a
kernel is defined, so it is set before anything imports the workbench. It changes nothing else:
``impl="auto"`` still uses the PyTorch path on CPU.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
