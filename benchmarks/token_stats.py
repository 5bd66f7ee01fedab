"""Token statistics benchmark: ours vs the naive way, time and peak extra memory.

    python benchmarks/token_stats.py --grid cpu      # the CPU table in benchmarks/README.md
    python benchmarks/token_stats.py --grid gpu      # on a CUDA machine
    python benchmarks/token_stats.py --grid smoke    # tiny, for the test suite

Methods, all computing sampled-token log-probs and full entropies of ``h @ W.T``:
- ``naive``: materialise the logits, ``log_softmax`` in float32, ``gather``, entropy;
- ``chunked``: materialise the logits, then :func:`workbench.entropy.token_stats`
  (float32 one chunk of rows at a time);
- ``hidden``: :func:`workbench.models.scoring.token_stats_from_hidden` with the PyTorch kernels (the
  logits never exist whole);
- ``fused`` (CUDA only): the same with the fused Triton kernels (``impl="triton"``).
Each case runs in a fresh subprocess; peak extra memory is the peak above the inputs
(CUDA: ``max_memory_allocated``; CPU: peak resident set size). Ratios are against ``naive``
measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

GRIDS = {
    "smoke": dict(tokens=[256], vocab=[1024], hidden=[64], modes=["score", "train"]),
    "cpu": dict(tokens=[2048, 8192], vocab=[32768, 151936], hidden=[896], modes=["score", "train"]),
    "gpu": dict(tokens=[2048, 8192, 32768], vocab=[32768, 151936], hidden=[896, 3584], modes=["score", "train"]),
}
METHODS = ("naive", "chunked", "hidden", "fused")


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def run_case(method: str, tokens: int, vocab: int, hidden: int, mode: str, device: str, repeats: int) -> dict:
    """Run one case in this process (called in a subprocess) and return its measurements."""
    import torch

    from workbench.entropy import token_stats
    from workbench.models.scoring import token_stats_from_hidden

    dev = torch.device(device)
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    g = torch.Generator(device="cpu").manual_seed(0)
    h = (torch.randn(tokens, hidden, generator=g) / hidden**0.5).to(dev, dtype).requires_grad_(mode == "train")
    w = torch.randn(vocab, hidden, generator=g).to(dev, dtype).requires_grad_(mode == "train")
    tok = torch.randint(0, vocab, (1, tokens), generator=g).to(dev)

    def naive():
        logits = (h @ w.T).float()
        logp_all = logits.log_softmax(-1)
        logp = logp_all.gather(-1, tok[0, :, None]).squeeze(-1)
        with torch.no_grad():
            ent = -(logp_all.exp() * logp_all).sum(-1)
        return logp, ent

    def chunked():
        return token_stats((h @ w.T)[None], tok)

    def hidden_path():
        return token_stats_from_hidden(h[None], w, tok, impl="torch")

    def fused():
        return token_stats_from_hidden(h[None], w, tok, impl="triton")

    fn = {"naive": naive, "chunked": chunked, "hidden": hidden_path, "fused": fused}[method]

    def once():
        with torch.set_grad_enabled(mode == "train"):
            logp, _ = fn()
            if mode == "train":
                logp.sum().backward()
                h.grad = w.grad = None

    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    base = _rss_bytes()  # CPU: the inputs are allocated; the peak below covers the warm-up too
    once()  # warm-up
    sync()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        once()
        sync()
        times.append(time.perf_counter() - t0)
    peak = (
        torch.cuda.max_memory_allocated()
        if dev.type == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    )
    return {"seconds": min(times), "peak_extra_mb": max(0, peak - base) / 2**20}


def measure(method, tokens, vocab, hidden, mode, device, repeats) -> dict:
    args = json.dumps([method, tokens, vocab, hidden, mode, device, repeats])
    code = (
        f"import json, sys; sys.path.insert(0, {sys.path[0]!r}); from token_stats import run_case; "
        f"print(json.dumps(run_case(*json.loads({args!r}))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if out.returncode != 0:
        return {"seconds": float("nan"), "peak_extra_mb": float("nan"), "error": out.stderr.strip().splitlines()[-1]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure_here(method, tokens, vocab, hidden, mode, device, repeats) -> dict:
    """:func:`run_case` in this process (CUDA), with the allocator emptied between cases."""
    import torch

    try:
        return run_case(method, tokens, vocab, hidden, mode, device, repeats)
    except Exception as e:  # e.g. out of memory: a row with the error, as a failed subprocess gives
        return {"seconds": float("nan"), "peak_extra_mb": float("nan"), "error": f"{type(e).__name__}: {e}"[:200]}
    finally:
        torch.cuda.empty_cache()


def main(argv=None):
    import pandas as pd

    p = argparse.ArgumentParser()
    p.add_argument("--grid", choices=sorted(GRIDS), default="cpu")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda for --grid gpu)")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument(
        "--in-process",
        action="store_true",
        help="run every case in this process (CUDA: peaks from max_memory_allocated stay per case; saves a "
        "process start and CUDA set-up per case); CPU needs a process per case for its peak",
    )
    p.add_argument(
        "--max-naive-gb",
        type=float,
        default=8.0,
        help="skip cases whose naive float32 logits alone exceed this (CPU memory is 24 GB)",
    )
    args = p.parse_args(argv)
    grid = GRIDS[args.grid]
    device = args.device or ("cuda" if args.grid == "gpu" else "cpu")
    rows = []
    for mode in grid["modes"]:
        for hidden in grid["hidden"]:
            for tokens in grid["tokens"]:
                for vocab in grid["vocab"]:
                    if tokens * vocab * 4 / 2**30 > args.max_naive_gb:
                        continue
                    if mode == "train" and device == "cpu" and tokens * vocab > 2048 * 151936:
                        continue  # a CPU backward at this size takes minutes per repeat
                    base = None
                    for method in METHODS if device == "cuda" else METHODS[:3]:
                        if args.in_process and device == "cuda":
                            r = measure_here(method, tokens, vocab, hidden, mode, device, args.repeats)
                        else:
                            r = measure(method, tokens, vocab, hidden, mode, device, args.repeats)
                        base = base or r
                        rows.append(
                            {
                                "mode": mode,
                                "tokens": tokens,
                                "vocab": vocab,
                                "hidden": hidden,
                                "method": method,
                                "seconds": round(r["seconds"], 4),
                                "peak_extra_mb": round(r["peak_extra_mb"], 1),
                                "time_vs_naive": round(r["seconds"] / base["seconds"], 2),
                                "memory_vs_naive": round(r["peak_extra_mb"] / max(base["peak_extra_mb"], 1e-9), 3),
                                **({"error": r["error"]} if "error" in r else {}),
                            }
                        )
                        print(pd.DataFrame(rows[-1:]).to_string(index=False, header=len(rows) == 1), flush=True)
    table = pd.DataFrame(rows)
    print()
    print(table.to_string(index=False))
    return table


if __name__ == "__main__":
    main()
