"""What the fused Triton kernels cost a GPU, read from the compiler: no GPU needed.

    python benchmarks/kernel_resources.py               # sm_80 (A100) and sm_90 (H100)
    python benchmarks/kernel_resources.py --arch 90

Compiles ``workbench.models.triton_stats``' forward and backward kernels ahead of time with Triton's
bundled ``ptxas`` for each target architecture and logits dtype, and prints what each compiled
kernel uses per thread (registers, local memory: bytes spilled from registers, stack) and per
block (shared memory, warps). It proves the kernels compile for those GPUs and shows whether
they spill; it does not time them (``token_stats.py --grid gpu`` does, on a GPU). Run it without
``TRITON_INTERPRET`` (the interpreter replaces the compiler).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import tempfile

DTYPES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}


def _variants(dtype: str):
    """(kernel name, signature, constexprs) of every specialisation the workbench launches."""
    from workbench.models import triton_stats as ts

    t = DTYPES[dtype]
    block = 4096  # ts._block(V) for every vocabulary of 4096 tokens or more
    fwd = {
        "z_ptr": f"*{t}",
        "z_stride": "i64",
        "tok_ptr": "*i64",
        "lse_ptr": "*fp32",
        "logp_ptr": "*fp32",
        "ent_ptr": "*fp32",
        "V": "i32",
        "inv_temp": "fp32",
        "BLOCK": "constexpr",
    }
    yield "forward", ts._forward_kernel, fwd, {"BLOCK": block}
    bwd = {
        "z_ptr": f"*{t}",
        "z_stride": "i64",
        "dz_ptr": f"*{t}",
        "dz_stride": "i64",
        "tok_ptr": "*i64",
        "lse_ptr": "*fp32",
        "ent_ptr": "*fp32",
        "glogp_ptr": "*fp32",
        "gent_ptr": "*fp32",
        "V": "i32",
        "inv_temp": "fp32",
        "HAS_GLOGP": "constexpr",
        "HAS_GENT": "constexpr",
        "BLOCK": "constexpr",
    }
    for glogp, gent in ((True, False), (True, True), (False, True)):
        name = "backward(" + "+".join(n for n, on in (("logp", glogp), ("entropy", gent)) if on) + ")"
        yield name, ts._backward_kernel, bwd, {"HAS_GLOGP": glogp, "HAS_GENT": gent, "BLOCK": block}


def _usage(cubin: bytes, tool: str) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run(
            [tool, "--dump-resource-usage", f.name], capture_output=True, text=True, check=True
        ).stdout
    fields = dict(re.findall(r"\b(REG|STACK|SHARED|LOCAL):(\d+)", text))
    return {k.lower(): int(v) for k, v in fields.items()}


def measure(archs=(80, 90), dtypes=tuple(DTYPES)) -> list[dict]:
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise SystemExit("unset TRITON_INTERPRET: the interpreter replaces the compiler this script reads")
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    rows = []
    for arch in archs:
        for dtype in dtypes:
            for name, fn, signature, constexprs in _variants(dtype):
                kernel = triton.compile(
                    ASTSource(fn=fn, signature=signature, constexprs=constexprs),
                    target=GPUTarget("cuda", arch, 32),
                    options={"enable_fp_fusion": True},
                )  # as the workbench launches them
                rows.append(
                    {
                        "arch": f"sm_{arch}",
                        "kernel": name,
                        "logits": dtype,
                        **_usage(kernel.asm["cubin"], tool),
                        "warps": kernel.metadata.num_warps,
                    }
                )
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", type=int, nargs="+", default=[80, 90], help="compute capabilities (80 = A100)")
    parser.add_argument("--dtype", nargs="+", default=list(DTYPES), choices=list(DTYPES))
    args = parser.parse_args(argv)
    import pandas as pd

    table = pd.DataFrame(measure(args.arch, args.dtype))
    print(table.to_string(index=False))
    spilled = table[table["local"] > 0]
    print(f"\n{len(table)} kernels compiled; {len(spilled)} spill registers to local memory")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
