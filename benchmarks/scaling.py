"""Scaling benchmark: one RL step as the response length and the group size grow.

    python benchmarks/scaling.py --grid cpu      # the CPU table in benchmarks/README.md
    python benchmarks/scaling.py --grid gpu      # Qwen2.5-0.5B-sized model on a CUDA machine
    python benchmarks/scaling.py --grid smoke    # tiny, for the test suite
    python benchmarks/scaling.py --grid gpu --generation-cache both   # static vs dynamic KV cache, same run

Each case trains a randomly initialised Qwen2 model (built from a config, saved to a temporary
directory with a tokenizer of the same vocabulary; nothing is downloaded) with the workbench
trainer: GRPO without dynamic sampling, so every step runs the same work. A random model
rarely emits end-of-sequence, so responses run to ``max_new_tokens``. Each case runs in a fresh
subprocess; it reports the median over the steps after the first of the rollout time (sampling,
rewards), the update time (one forward with gradients for log-probs and entropies, loss,
backward, optimizer step), the generated tokens, and peak memory (CUDA: ``max_memory_allocated``;
CPU: peak resident set size of the process). Ratios are per generated token against the
smallest case of the same sweep, measured in the same run: 1.0 means linear growth.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

#: Qwen2.5-0.5B's shape (config.json of the public checkpoint), random weights.
QWEN25_05B = dict(
    hidden_size=896,
    num_hidden_layers=24,
    num_attention_heads=14,
    num_key_value_heads=2,
    intermediate_size=4864,
    vocab_size=151936,
    max_position_embeddings=32768,
    rope_theta=1e6,
    tie_word_embeddings=True,
)
SMALL = dict(
    hidden_size=256,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=1024,
    vocab_size=32768,
    max_position_embeddings=4096,
    tie_word_embeddings=True,
)
TINY = dict(
    hidden_size=32,
    num_hidden_layers=1,
    num_attention_heads=2,
    num_key_value_heads=2,
    intermediate_size=64,
    vocab_size=512,
    max_position_embeddings=256,
    tie_word_embeddings=True,
)

# sweeps: (name, prompts per step, [(group size, response length), ...])
GRIDS = {
    "smoke": dict(model=TINY, prompts=1, length=[(2, 8)], group=[(4, 8)]),
    "cpu": dict(model=SMALL, prompts=2, length=[(4, 64), (4, 256), (4, 1024)], group=[(4, 128), (16, 128), (64, 128)]),
    "gpu": dict(
        model=QWEN25_05B,
        prompts=2,
        length=[(16, 64), (16, 256), (16, 1024), (16, 4096)],
        group=[(4, 512), (16, 512), (64, 512)],
    ),
}


def build_model_dir(sizes: dict, root: Path) -> Path:
    """A random Qwen2 model of ``sizes`` and a tokenizer with exactly its vocabulary."""
    from workbench.models.load import build_tiny_model, save_model
    from workbench.models.tokenizer import ALPHABET, SPECIAL_TOKENS, build_char_tokenizer

    base = len(SPECIAL_TOKENS) + len(ALPHABET)
    fillers = (chr(c) for c in range(0x100, 0x110000) if not 0xD800 <= c <= 0xDFFF and chr(c).isprintable())
    extra = "".join(next(fillers) for _ in range(sizes["vocab_size"] - base))
    tokenizer = build_char_tokenizer(extra)
    assert len(tokenizer) == sizes["vocab_size"], (len(tokenizer), sizes["vocab_size"])
    model = build_tiny_model(tokenizer, seed=0, **{k: v for k, v in sizes.items() if k != "vocab_size"})
    path = root / "model"
    save_model(model, tokenizer, path)
    return path


def _peak_mb(device: str) -> float:
    import torch

    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_case(
    model_dir: str,
    prompts: int,
    group: int,
    length: int,
    steps: int,
    device: str,
    gradient_checkpointing: bool,
    generation_cache: str = "dynamic",
) -> dict:
    """Train ``steps`` steps in this process (called in a subprocess); medians after the first."""
    import torch

    from workbench.training.config import TrainConfig
    from workbench.training.trainer import Trainer

    with tempfile.TemporaryDirectory() as out:
        config = TrainConfig(
            model=model_dir,
            algorithm="grpo",
            dynamic_sampling=False,
            prompts_per_step=prompts,
            group_size=group,
            max_new_tokens=length,
            steps=steps,
            eval_size=1,
            gradient_checkpointing=gradient_checkpointing,
            generation_cache=generation_cache,
            device=device,
            output_dir=out,
            log_samples_every=10**6,
        )
        trainer = Trainer(config, progress=False)
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        rows = []
        for step in range(1, steps + 1):
            t0 = time.perf_counter()
            row = trainer.train_step(step)
            row["wall"] = time.perf_counter() - t0
            rows.append(row)
    timed = rows[1:] or rows
    med = {
        k: statistics.median(r[k] for r in timed) for k in ("time_rollout", "time_update", "wall", "generated_tokens")
    }
    med["response_len_max"] = max(r["response_len_max"] for r in timed)
    med["peak_mb"] = _peak_mb(device)
    return med


def measure(model_dir, prompts, group, length, steps, device, gradient_checkpointing, generation_cache) -> dict:
    args = json.dumps([str(model_dir), prompts, group, length, steps, device, gradient_checkpointing, generation_cache])
    code = (
        f"import json, sys; sys.path.insert(0, {sys.path[0]!r}); from scaling import run_case; "
        f"print(json.dumps(run_case(*json.loads({args!r}))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if out.returncode != 0:
        return {"error": out.stderr.strip().splitlines()[-1]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None):
    import pandas as pd

    p = argparse.ArgumentParser()
    p.add_argument("--grid", choices=sorted(GRIDS), default="cpu")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda for --grid gpu)")
    p.add_argument("--steps", type=int, default=3, help="steps per case; the first is not counted")
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument(
        "--generation-cache",
        choices=["dynamic", "static", "both"],
        default="dynamic",
        help="KV cache for the rollouts (static: preallocated, decode step compiled on CUDA); "
        "both: each case with each, and the static rollout time as a ratio of the dynamic one",
    )
    p.add_argument("--sweeps", nargs="+", choices=["length", "group"], default=["length", "group"])
    p.add_argument(
        "--max-length",
        type=int,
        default=None,
        help="leave out cases with more new tokens than this (a shorter run of a grid)",
    )
    args = p.parse_args(argv)
    grid = GRIDS[args.grid]
    device = args.device or ("cuda" if args.grid == "gpu" else "cpu")
    caches = ["dynamic", "static"] if args.generation_cache == "both" else [args.generation_cache]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_model_dir(grid["model"], Path(tmp))
        for sweep in args.sweeps:
            base = {}
            for group, length in grid[sweep]:
                if args.max_length is not None and length > args.max_length:
                    continue
                for cache in caches:
                    r = measure(
                        model_dir,
                        grid["prompts"],
                        group,
                        length,
                        args.steps,
                        device,
                        args.gradient_checkpointing,
                        cache,
                    )
                    row = {
                        "sweep": sweep,
                        "cache": cache,
                        "prompts": grid["prompts"],
                        "group": group,
                        "max_new_tokens": length,
                    }
                    if "error" in r:
                        rows.append({**row, "error": r["error"]})
                    else:
                        per_token = {k: r[k] / max(r["generated_tokens"], 1) for k in ("time_rollout", "time_update")}
                        first = base.setdefault(cache, per_token)
                        rows.append(
                            {
                                **row,
                                "generated_tokens": int(r["generated_tokens"]),
                                "step_s": round(r["wall"], 3),
                                "rollout_s": round(r["time_rollout"], 3),
                                "update_s": round(r["time_update"], 3),
                                "peak_mb": round(r["peak_mb"]),
                                "rollout_per_token_vs_first": round(
                                    per_token["time_rollout"] / first["time_rollout"], 2
                                ),
                                "update_per_token_vs_first": round(per_token["time_update"] / first["time_update"], 2),
                            }
                        )
                        if cache == "static" and len(caches) == 2 and "rollout_s" in rows[-2]:
                            rows[-1]["rollout_static_vs_dynamic"] = round(r["time_rollout"] / rows[-2]["rollout_s"], 2)
                    print(pd.DataFrame(rows[-1:]).to_string(index=False, header=len(rows) == 1), flush=True)
    table = pd.DataFrame(rows)
    print()
    print(f"model: {json.dumps(grid['model'])}, device: {device}")
    print(table.to_string(index=False))
    return table


if __name__ == "__main__":
    main()
