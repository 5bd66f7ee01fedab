"""Command line: ``python -m workbench <command>`` (also the ``workbench`` console script)."""

from __future__ import annotations

import argparse
import sys


def _demo(args) -> int:
    import pandas as pd

    from .examples import advantage_table

    table = advantage_table()
    with pd.option_context("display.float_format", "{:+.4f}".format, "display.width", 120):
        print("Advantages of the spec's worked example (one group, n = 4; responses 0, 1 correct):")
        print(table.to_string(index=False))
    print("\nGRPO and DAPO give every token of a response the same value; GTPO moves credit to")
    print("high-entropy tokens of correct responses and to low-entropy tokens of wrong ones;")
    print("GRPO-S does the same per response (mean token entropy).")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="workbench", description="GTPO / GRPO-S research workbench")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("demo", help="print GRPO vs DAPO vs GTPO vs GRPO-S advantages for a toy group")
    p.set_defaults(func=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    return args.func(args)
