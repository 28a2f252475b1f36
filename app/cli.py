"""Command line: argument parsing and dispatch only.

    python -m app train --config FILE [--set KEY=VALUE ...] [--address ADDR] [--fresh]
    python -m app tune  --config FILE [--set KEY=VALUE ...] [--address ADDR] [--resume | --fresh]

Exit codes: 0 success; 2 bad usage, config or input (one line on stderr, no
traceback); 1 anything else.
"""

from __future__ import annotations

import argparse
import sys

from app.errors import UserError, find_user_error


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m app", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = commands.add_parser("train", help="train a model as the config says")
    add_config_args(train)
    train.add_argument("--address", help="Ray cluster to join (default: $RAY_ADDRESS, else an embedded Ray)")
    train.add_argument("--fresh", action="store_true",
                       help="delete the run folder of this name and start over")
    train.set_defaults(handler=cmd_train)

    tune = commands.add_parser("tune", help="sweep hyperparameters (the config's tune section) with Ray Tune")
    add_config_args(tune)
    tune.add_argument("--address", help="Ray cluster to join (default: $RAY_ADDRESS, else an embedded Ray)")
    again = tune.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true", help="continue an interrupted sweep of this name")
    again.add_argument("--fresh", action="store_true", help="delete the sweep folder of this name and start over")
    tune.set_defaults(handler=cmd_tune)
    return parser


def add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="YAML config file")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. --set train.epochs=3 (value parsed as YAML)")


def load_run(args: argparse.Namespace):
    """The config, or None when a run of this name already finished (and --fresh was not
    given); --fresh deletes the run folder first."""
    from app.config import load_config
    from app.training.trainer import finished_metrics, remove_tree, run_dir

    cfg = load_config(args.config, args.overrides)
    if args.fresh:
        remove_tree(run_dir(cfg))
    elif finished_metrics(cfg) is not None:
        return None
    return cfg


def cmd_train(args: argparse.Namespace) -> int:
    from app import cluster
    from app.training.trainer import preflight, run_training

    cfg = load_run(args)
    if cfg is None:
        return 0
    inputs = preflight(cfg)  # no Ray yet: bad input fails in a second
    cluster.connect(args.address)
    run_training(cfg, inputs)
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    from app import cluster
    from app.training.trainer import preflight, run_dir
    from app.tuning import run_tune, search_space

    cfg = load_run(args)
    if cfg is None:
        return 0
    search_space(cfg)  # a bad space fails before Ray starts
    inputs = preflight(cfg)
    if not args.resume and cluster.exists(run_dir(cfg)):
        raise UserError(f"{run_dir(cfg)} holds an unfinished sweep; pass --resume to continue it "
                        f"or --fresh to start over")
    cluster.connect(args.address)
    run_tune(cfg, inputs, resume=args.resume)
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
