"""Command line: argument parsing and dispatch only.

    python -m app train --config FILE [--set KEY=VALUE ...] [--address ADDR] [--fresh]

Exit codes: 0 success; 2 bad usage, config or input (one line on stderr, no
traceback); 1 anything else.
"""

from __future__ import annotations

import argparse
import sys

from app.errors import UserError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m app", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = commands.add_parser("train", help="train a model as the config says")
    add_config_args(train)
    train.add_argument("--address", help="Ray cluster to join (default: $RAY_ADDRESS, else an embedded Ray)")
    train.add_argument("--fresh", action="store_true",
                       help="delete the run folder of this name and start over")
    train.set_defaults(handler=cmd_train)
    return parser


def add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="YAML config file")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. --set train.epochs=3 (value parsed as YAML)")


def cmd_train(args: argparse.Namespace) -> int:
    from app import cluster
    from app.config import load_config
    from app.training.trainer import finished_metrics, preflight, remove_tree, run_dir, run_training

    cfg = load_config(args.config, args.overrides)
    inputs = preflight(cfg)  # no Ray yet: bad input fails in a second
    if args.fresh:
        remove_tree(run_dir(cfg))
    elif finished_metrics(cfg) is not None:
        return 0
    cluster.connect(args.address)
    run_training(cfg, inputs)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - sorted into "bad input" and "bug" right here
        user_error = find_user_error(e)
        if user_error is None:
            raise
        print(f"error: {user_error}", file=sys.stderr)
        return 2


def find_user_error(e: BaseException) -> UserError | None:
    """A UserError, raised here or inside a Ray task or worker and wrapped by Ray."""
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, UserError):
            return e
        seen.add(id(e))
        e = getattr(e, "cause", None) or e.__cause__ or e.__context__
    return None
