"""Fused Triton kernels for token statistics: one pass over a chunk of logits per direction.

Forward (one program per row): an online log-sum-exp over vocabulary blocks that also keeps
``sum softmax * (z - max)``, so the log-probability of the sampled token and the entropy
``H = log-sum-exp - sum p * z`` come out of a single read of the row, in float32 whatever the
logits' dtype, with no ``[rows, vocab]`` float32 temporaries. Backward writes
``dz = g_logp * (onehot - p) - g_H * p * (log p + H)`` (divided by the temperature) over the
logits buffer itself, in its dtype: a chunk's gradient costs no memory beyond its logits.

:func:`workbench.models.scoring.token_stats_from_hidden` uses these kernels on CUDA (``impl="auto"``)
after checking them once against the PyTorch path; the PyTorch path stays the CPU path and the
reference. With ``TRITON_INTERPRET=1`` the kernels run on CPU tensors (the tests do this).
"""

from __future__ import annotations

import os

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised where triton is absent
    triton = tl = None

__all__ = ["available", "stats_forward", "stats_backward"]


def available(device: torch.device) -> bool:
    """Triton is importable and can run on ``device`` (CUDA, or any device under the interpreter)."""
    if triton is None:
        return False
    return device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1"


def _block(V: int) -> int:
    return min(4096, triton.next_power_of_2(V))


if triton is not None:

    @triton.jit
    def _forward_kernel(z_ptr, z_stride, tok_ptr, lse_ptr, logp_ptr, ent_ptr, V, inv_temp, BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        base = z_ptr + row * z_stride
        m = tl.full([], float("-inf"), tl.float32)  # running max of z
        s = tl.zeros([], tl.float32)  # sum exp(z - m)
        t = tl.zeros([], tl.float32)  # sum exp(z - m) * (z - m)
        for start in range(0, V, BLOCK):
            cols = start + tl.arange(0, BLOCK)
            valid = cols < V
            z = tl.load(base + cols, mask=valid, other=float("-inf")).to(tl.float32) * inv_temp
            m_new = tl.maximum(m, tl.max(z, 0))
            scale = tl.exp(m - m_new)
            shift = tl.where(s > 0, m - m_new, 0.0)  # nothing to move before the first block
            t = scale * (t + shift * s)  # re-centre the running sums on the new max
            s = s * scale
            e = tl.where(valid, tl.exp(z - m_new), 0.0)
            s += tl.sum(e, 0)
            t += tl.sum(e * tl.where(e > 0, z - m_new, 0.0), 0)
            m = m_new
        log_s = tl.log(s)
        lse = m + log_s
        tok = tl.load(tok_ptr + row)
        z_tok = tl.load(base + tok).to(tl.float32) * inv_temp
        tl.store(lse_ptr + row, lse)
        tl.store(logp_ptr + row, z_tok - lse)
        tl.store(ent_ptr + row, log_s - t / s)  # H = lse - E[z] = log s - E[z - m]

    @triton.jit
    def _backward_kernel(
        z_ptr,
        z_stride,
        dz_ptr,
        dz_stride,
        tok_ptr,
        lse_ptr,
        ent_ptr,
        glogp_ptr,
        gent_ptr,
        V,
        inv_temp,
        HAS_GLOGP: tl.constexpr,
        HAS_GENT: tl.constexpr,
        BLOCK: tl.constexpr,
    ):
        row = tl.program_id(0).to(tl.int64)
        lse = tl.load(lse_ptr + row)
        tok = tl.load(tok_ptr + row)
        g_logp = tl.load(glogp_ptr + row) if HAS_GLOGP else 0.0
        g_ent = tl.load(gent_ptr + row) if HAS_GENT else 0.0
        H = tl.load(ent_ptr + row)
        for start in range(0, V, BLOCK):
            cols = start + tl.arange(0, BLOCK)
            valid = cols < V
            z = tl.load(z_ptr + row * z_stride + cols, mask=valid, other=float("-inf")).to(tl.float32) * inv_temp
            p = tl.exp(z - lse)
            logp = tl.where(p > 0, z - lse, 0.0)  # p log p -> 0 where p underflows
            d = tl.where(cols == tok, g_logp, 0.0) - g_logp * p
            d -= g_ent * p * (logp + H)
            tl.store(dz_ptr + row * dz_stride + cols, (d * inv_temp).to(dz_ptr.dtype.element_ty), mask=valid)


def _check(z: torch.Tensor, tokens: torch.Tensor) -> None:
    if triton is None:
        raise RuntimeError("the Triton token-statistics kernels need triton (pip install triton)")
    if z.dim() != 2 or z.stride(1) != 1:
        raise ValueError(f"logits must be a [rows, vocab] tensor with contiguous rows, got shape {tuple(z.shape)}")
    if tokens.shape != (z.shape[0],):
        raise ValueError(f"tokens has shape {tuple(tokens.shape)}, expected ({z.shape[0]},)")


def stats_forward(z: torch.Tensor, tokens: torch.Tensor, temperature: float = 1.0):
    """``(lse, logp, entropy)`` (float32, ``[rows]``) of ``z / temperature`` for ``z [rows, V]``."""
    _check(z, tokens)
    N, V = z.shape
    out = [torch.empty(N, dtype=torch.float32, device=z.device) for _ in range(3)]
    if N:
        _forward_kernel[(N,)](
            z,
            z.stride(0),
            tokens.long().contiguous(),
            *out,
            V,
            1.0 / temperature,
            BLOCK=_block(V),
            enable_fp_fusion=True,
        )
    return tuple(out)


def stats_backward(
    z: torch.Tensor,
    tokens: torch.Tensor,
    lse: torch.Tensor,
    entropy: torch.Tensor,
    grad_logp: torch.Tensor | None,
    grad_entropy: torch.Tensor | None,
    temperature: float = 1.0,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Gradient w.r.t. the raw logits ``z`` (before the temperature), in ``z``'s dtype.

    ``out`` may be ``z`` itself: each element is read before it is overwritten.
    """
    _check(z, tokens)
    N, V = z.shape
    out = torch.empty_like(z) if out is None else out
    if out.shape != z.shape or out.stride(1) != 1:
        raise ValueError(f"out has shape {tuple(out.shape)}, expected {tuple(z.shape)} with contiguous rows")
    dummy = lse  # never read when the matching HAS_ flag is off
    if N:
        _backward_kernel[(N,)](
            z,
            z.stride(0),
            out,
            out.stride(0),
            tokens.long().contiguous(),
            lse,
            entropy,
            dummy if grad_logp is None else grad_logp.float().contiguous(),
            dummy if grad_entropy is None else grad_entropy.float().contiguous(),
            V,
            1.0 / temperature,
            HAS_GLOGP=grad_logp is not None,
            HAS_GENT=grad_entropy is not None,
            BLOCK=_block(V),
            enable_fp_fusion=True,
        )
    return out
