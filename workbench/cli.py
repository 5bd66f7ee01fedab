"""Command line: ``python -m workbench <command>`` (also the ``workbench`` console script).

An error is one line on stderr and exit code 1; ``--debug`` (before or after the command) or
``WORKBENCH_DEBUG=1`` shows the full traceback instead.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings


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


def _train(args) -> int:
    from .training.config import TrainConfig
    from .training.trainer import resume, train

    overrides = _overrides(args)
    if args.resume:
        run = resume(args.resume, **overrides)
    else:
        base = TrainConfig.load(args.config).to_dict(resolve=False) if args.config else {}
        run = train({**base, **overrides}, overwrite=args.overwrite)
    if os.environ.get("RANK", "0") != "0":  # under torchrun / accelerate launch the main process reports
        return 0
    print(f"run directory: {run.path}")
    task_info = json.loads((run.path / "task.json").read_text()) if (run.path / "task.json").exists() else {}
    if task_info.get("skipped_lines"):
        print(
            f"skipped {task_info['skipped_lines']} malformed line(s) of {task_info.get('path')} (lenient=True; "
            f"listed in {run.path / 'task.json'})"
        )
    evals = run.evals
    if len(evals):
        print(evals.to_string(index=False))
    return 0


def _warmstart(args) -> int:
    from .training.warmstart import warm_start

    names = (
        "task",
        "seed",
        "target_accuracy",
        "max_steps",
        "out",
        "eval_size",
        "eval_every",
        "init",
        "batch_size",
        "lr",
    )
    kwargs = {k: v for k, v in vars(args).items() if k in names}
    kwargs["task_params"] = json.loads(args.task_params)
    if kwargs["out"] is None:
        del kwargs["out"]
    print(json.dumps(warm_start(**kwargs), indent=2))
    return 0


def _study(args) -> int:
    import shlex

    from .analysis.study import describe, run_grid, save_manifest

    settings = [json.loads(s) for s in args.setting] or [{}]
    base = _overrides(args)
    table = run_grid(
        args.root,
        algorithms=args.algorithms.split(","),
        seeds=[int(s) for s in args.seeds.split(",")],
        settings=settings,
        base=base,
    )
    save_manifest(args.root, "python -m workbench " + shlex.join(sys.argv[1:] if args.argv is None else args.argv))
    print(describe(table, "final_accuracy").to_string(index=False))
    return 0


def _convert_gguf(args) -> int:
    from .models import convert_gguf

    print(f"wrote {convert_gguf(args.file, args.out_dir)}")
    return 0


def _add_config_options(parser: argparse.ArgumentParser) -> None:
    """One ``--field`` option per TrainConfig field, its help from the field's own documentation
    (meaning, default, choices: :meth:`TrainConfig.describe`); dict fields take JSON. Values are
    checked by the config itself, so a bad one gets the config's one-line error."""
    import dataclasses

    from .training.config import TrainConfig

    group = parser.add_argument_group("training options (TrainConfig fields; unset: the config file's or default)")
    for f in dataclasses.fields(TrainConfig):
        flag, kind, help = "--" + f.name.replace("_", "-"), str(f.type), TrainConfig.describe(f.name).replace("%", "%%")
        if kind.startswith("dict"):
            group.add_argument(flag, dest=f.name, type=_json_object, default=None, metavar="JSON", help=help)
        elif kind.startswith("bool"):
            group.add_argument(flag, dest=f.name, type=_parse_bool, default=None, metavar="true|false", help=help)
        else:
            kind = int if kind.startswith("int") else float if kind.startswith("float") else str
            group.add_argument(flag, dest=f.name, type=kind, default=None, metavar=f.name.upper(), help=help)


def _json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not valid JSON ({e.msg}): {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return value


def _parse_bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _overrides(args) -> dict:
    import dataclasses

    from .training.config import TrainConfig

    names = {f.name for f in dataclasses.fields(TrainConfig)}
    return {k: v for k, v in vars(args).items() if k in names and v is not None}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="workbench", description="GTPO / GRPO-S research workbench")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    common = argparse.ArgumentParser(add_help=False)  # --debug after the command works too
    common.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help="show the full traceback of an error"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, func, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help, parents=[common])
        p.set_defaults(func=func)
        return p

    command("demo", _demo, "print GRPO vs DAPO vs GTPO vs GRPO-S advantages for a toy group")
    p = command("train", _train, "train with GRPO, DAPO, GTPO, GRPO-S, ... (every TrainConfig field is an option)")
    p.add_argument("--config", help="a JSON file of TrainConfig fields (options below override it)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its last intact checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace an existing (not running) run in output_dir")
    _add_config_options(p)

    p = command("study", _study, "run a grid of algorithms x seeds x settings (resumable) and summarise it")
    p.add_argument("--root", required=True, help="directory of the study (runs/ and results.csv)")
    p.add_argument("--algorithms", default="grpo,dapo,gtpo,grpo_s", help="comma-separated registry names")
    p.add_argument("--seeds", default="0,1,2,3,4", help="comma-separated seeds")
    p.add_argument(
        "--setting",
        action="append",
        default=[],
        metavar="JSON",
        help='TrainConfig overrides of one setting, e.g. \'{"task": "chain", "task_params": {"steps": 8}}\' '
        "(repeat for several)",
    )
    _add_config_options(p)

    p = command("warmstart", _warmstart, "supervised warm start of the tiny model (rebuilds the shipped checkpoint)")
    p.add_argument("--task", default="addition")
    p.add_argument("--task-params", default="{}", metavar="JSON")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--target-accuracy", type=float, default=0.2)
    p.add_argument("--max-steps", type=int, default=3000)
    p.add_argument("--batch-size", type=int, default=64, help="worked solutions per SFT step")
    p.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate")
    p.add_argument("--eval-every", type=int, default=25, help="SFT steps between accuracy checks")
    p.add_argument("--eval-size", type=int, default=256, help="held-out problems per accuracy check")
    p.add_argument(
        "--init",
        default=None,
        metavar="DIR",
        help="continue from this local checkpoint (e.g. a warm start on shorter chains) instead of a fresh model",
    )
    p.add_argument(
        "--out",
        default=None,
        help="output directory (default: the shipped checkpoint path); "
        "an interrupted warm start resumes when called again with the same arguments",
    )

    p = command("convert-gguf", _convert_gguf, "convert a GGUF model file into a safetensors checkpoint directory")
    p.add_argument("file", help="the .gguf file (or a name workbench.models.load_model resolves to one)")
    p.add_argument("out_dir", help="the checkpoint directory to write")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run a command; an error is one line on stderr and exit code 1 (``--debug``, or the
    environment variable ``WORKBENCH_DEBUG=1``, shows the full traceback instead)."""
    parser = build_parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    args.argv = argv
    debug = bool(getattr(args, "debug", False) or os.environ.get("WORKBENCH_DEBUG"))
    formatwarning = warnings.formatwarning
    if not debug:
        warnings.formatwarning = _one_line_warning
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if debug:
            raise
        print(f"error: {_one_line(e)} (--debug shows the traceback)", file=sys.stderr)
        return 1
    finally:
        warnings.formatwarning = formatwarning


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or "(no message)"
    if isinstance(error, KeyError):  # its str() is the quoted key
        text = f"missing key {text}"
    return text if isinstance(error, (ValueError, TypeError)) else f"{type(error).__name__}: {text}"


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    return f"warning: {' '.join(str(message).split())}\n"
