"""Command line: argument parsing, a call into the Python API (app/api.py), printing and
exit codes; nothing else. `raytab COMMAND` and `python -m app COMMAND` are the same.

    python -m app init  DATA --label COL [--output FILE] [--name NAME] [--task auto] [--force]
    python -m app train --config FILE [--set KEY=VALUE ...] [--address ADDR] [--fresh]
    python -m app tune  --config FILE [--set KEY=VALUE ...] [--address ADDR] [--resume | --fresh]
    python -m app evaluate --checkpoint CKPT --data URI [--output FILE.json]
    python -m app predict  --checkpoint CKPT --input URI --output URI [--overwrite] [--concurrency N]
    python -m app baseline --config FILE [--set KEY=VALUE ...]
    python -m app report   RUN_DIR
    python -m app export   --checkpoint CKPT --output DIR [--overwrite]
    python -m app serve    --checkpoint CKPT [--replicas N] [--host 127.0.0.1] [--port 8000] [--token-file FILE]
    python -m app submit   [--address ADDR] COMMAND [ARGS ...]   (COMMAND as a Ray job)

Exit codes: 0 success; 2 bad usage, config or input (one line on stderr, no
traceback); 130 stopped by Ctrl-C (SIGINT), 143 by SIGTERM (one line on stderr: what was
stopped, and how to go on); 1 anything else.
"""

from __future__ import annotations

import argparse
import logging
import signal
import socket
import sys
import threading
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import NoReturn

from app.errors import find_user_error
from app.redact import redact, redacted_output

log = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    from app.version import version

    parser = argparse.ArgumentParser(prog="raytab", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="version", version=f"raytab {version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    init = commands.add_parser("init", help="write a commented config for a table (no Ray)")
    init.add_argument("data", metavar="DATA", help="CSV/Parquet: file, folder, glob or URI")
    init.add_argument("--label", required=True, help="the column to predict")
    init.add_argument("--output", help="the YAML file to write (default: NAME.yaml in the current folder)")
    init.add_argument("--name", help="run name (default: the data file's name without its extension)")
    init.add_argument("--task", choices=("auto", "classification", "regression"), default="auto",
                      help="data.task to write (default auto: decided from the label when training)")
    init.add_argument("--force", action="store_true", help="replace an existing output file")
    init.set_defaults(handler=cmd_init)

    train = commands.add_parser("train", help="train a model as the config says")
    add_config_args(train)
    add_address_arg(train)
    train.add_argument("--fresh", action="store_true",
                       help="delete the run folder of this name and start over")
    train.set_defaults(handler=cmd_train)

    tune = commands.add_parser("tune", help="sweep hyperparameters (the config's tune section) with Ray Tune")
    add_config_args(tune)
    add_address_arg(tune)
    again = tune.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true", help="continue an interrupted sweep of this name")
    again.add_argument("--fresh", action="store_true", help="delete the sweep folder of this name and start over")
    tune.set_defaults(handler=cmd_tune)

    evaluate = commands.add_parser("evaluate", help="score a checkpoint on labelled data")
    evaluate.add_argument("--checkpoint", required=True, help="checkpoint folder (local path or URI)")
    evaluate.add_argument("--data", required=True, help="labelled CSV/Parquet: file, folder, glob or URI")
    evaluate.add_argument("--output", help="also write the results to this JSON file")
    evaluate.add_argument("--importance", action="store_true",
                          help="also each feature's permutation importance (increase in loss when shuffled)")
    evaluate.add_argument("--repeats", type=positive_int, help="with --importance: shuffles per feature (default 5)")
    evaluate.add_argument("--max-rows", type=positive_int,
                          help="with --importance: most rows of the seeded sample it uses (default 10000)")
    add_address_arg(evaluate)
    evaluate.set_defaults(handler=cmd_evaluate, stopped="evaluate stopped; nothing was written")

    predict = commands.add_parser("predict", help="batch predictions from a checkpoint with Ray Data")
    predict.add_argument("--checkpoint", required=True, help="checkpoint folder (local path or URI)")
    predict.add_argument("--input", required=True, help="CSV/Parquet: file, folder, glob or URI")
    predict.add_argument("--output", required=True,
                         help="a .csv or .parquet file, or else a folder of Parquet parts (local path or URI)")
    predict.add_argument("--overwrite", action="store_true", help="replace an existing output")
    predict.add_argument("--batch-size", type=positive_int, default=4096, help="rows per model call")
    predict.add_argument("--concurrency", type=positive_int,
                         help="most input blocks scored at once, one CPU each (default: the cluster's CPUs)")
    predict.add_argument("--actors", type=positive_int, dest="concurrency", help=argparse.SUPPRESS)  # old name
    add_address_arg(predict)
    predict.set_defaults(handler=cmd_predict,
                         stopped="predict stopped; nothing was written (a previous output is as it was)")

    baseline = commands.add_parser("baseline", help="fit scikit-learn baselines on the config's split")
    add_config_args(baseline)
    add_address_arg(baseline)
    baseline.set_defaults(handler=cmd_baseline)

    report = commands.add_parser("report", help="write RUN_DIR/report.html with plots")
    report.add_argument("run_dir", metavar="RUN_DIR", help="a run or sweep folder (local path or URI)")
    report.set_defaults(handler=cmd_report)

    export = commands.add_parser("export", help="a checkpoint as ONNX + preprocessing, usable without Ray")
    export.add_argument("--checkpoint", required=True, help="checkpoint folder (local path or URI)")
    export.add_argument("--output", required=True, help="folder to create")
    export.add_argument("--overwrite", action="store_true", help="replace an existing folder")
    export.set_defaults(handler=cmd_export, stopped="export stopped; nothing was written")

    serve = commands.add_parser("serve", help="real-time predictions over HTTP with Ray Serve")
    serve.add_argument("--checkpoint", required=True, help="checkpoint folder (local path or URI)")
    serve.add_argument("--replicas", type=positive_int, default=1, help="copies of the model (default 1)")
    serve.add_argument("--cpus-per-replica", type=positive_float, default=1.0,
                       help="logical CPUs reserved per replica, also its torch threads (default 1)")
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to listen on (default 127.0.0.1; 0.0.0.0 for every interface)")
    serve.add_argument("--port", type=port_number, default=8000, help="HTTP port (default 8000)")
    serve.add_argument("--max-rows", type=positive_int, default=10_000,
                       help="most records per request; more gets 413 (default 10000)")
    serve.add_argument("--max-body-mb", type=positive_float, default=10.0,
                       help="largest request body in MiB; larger gets 413 (default 10)")
    serve.add_argument("--max-batch-size", type=positive_int, default=32,
                       help="most requests merged into one model call (default 32)")
    serve.add_argument("--batch-wait-ms", type=non_negative_float, default=5.0,
                       help="how long a batch waits for more requests after its first (default 5)")
    serve.add_argument("--max-ongoing-requests", type=positive_int, default=64,
                       help="requests one replica holds at once; Serve's proxy queues the rest (default 64)")
    serve.add_argument("--token-file", help="file holding the bearer token that requests must carry (default: "
                       "$APP_SERVE_TOKEN); required unless --host is a loopback address")
    add_address_arg(serve)
    serve.set_defaults(handler=cmd_serve)

    from app.submit import ENV_HELP

    submit = commands.add_parser(
        "submit", help="run one of these commands on a Ray cluster as a Ray job and follow its logs",
        description="Run `python -m app COMMAND ARGS...` as a Ray job: the project folder is uploaded, the "
                    "logs are followed, and the exit status is the job's (0: it succeeded, else 1).",
        epilog=ENV_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    submit.add_argument("--address", help="the cluster's job API (default: $RAY_ADDRESS, else http://127.0.0.1:8265)")
    submit.add_argument("job_command", metavar="COMMAND", choices=[c for c in commands.choices if c != "submit"],
                        help="the command to run in the job: %(choices)s")
    submit.add_argument("job_args", nargs=argparse.REMAINDER, metavar="ARGS", help="its arguments, passed verbatim")
    submit.set_defaults(handler=cmd_submit)
    return parser


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def port_number(text: str) -> int:
    value = positive_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"expected a port number up to 65535, got {text!r}")
    return value


def positive_float(text: str) -> float:
    value = non_negative_float(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number of 0 or more, got {text!r}")
    return value


def add_address_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--address", help="Ray cluster to join (default: $RAY_ADDRESS, else an embedded Ray)")


def add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="YAML config file")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. --set train.epochs=3 (value parsed as YAML)")


def load_config(args: argparse.Namespace):
    from app.config import load_config

    return load_config(args.config, args.overrides)  # --set as text, parsed as YAML


def cmd_init(args: argparse.Namespace) -> int:
    import shlex

    import app

    path = app.init_config(args.data, args.label, output=args.output, name=args.name, task=args.task,
                           force=args.force)
    log.info(f"written: {path}; train it with: raytab train --config {shlex.quote(path)}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    import app

    cfg = load_config(args)
    args.stopped = (f"train of run {cfg.name!r} stopped; run the same command again to resume from its last "
                    f"checkpoint")
    app.train(cfg, fresh=args.fresh, address=args.address)
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    import app

    cfg = load_config(args)
    args.stopped = f"tune of sweep {cfg.name!r} stopped; run the same command with --resume to continue it"
    app.tune(cfg, resume=args.resume, fresh=args.fresh, address=args.address)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    import app
    from app.evaluating import format_evaluation

    given = [flag for flag, value in (("--repeats", args.repeats), ("--max-rows", args.max_rows)) if value]
    if given and not args.importance:
        raise app.UserError(f"{given[0]}: only with --importance")
    options = {k: v for k, v in (("repeats", args.repeats), ("max_rows", args.max_rows)) if v}
    result = app.evaluate(args.checkpoint, args.data, output=args.output, address=args.address,
                          importance=args.importance, **options)
    log.info(format_evaluation(result))
    if args.output:
        log.info(f"written: {args.output}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    import time

    import app

    started = time.perf_counter()
    rows = app.predict(args.checkpoint, args.input, args.output, overwrite=args.overwrite,
                       batch_size=args.batch_size, concurrency=args.concurrency, address=args.address)
    elapsed = time.perf_counter() - started
    log.info(f"{rows} rows predicted in {elapsed:.1f}s ({rows / elapsed:,.0f} rows/s): {args.output}")
    return 0


def cmd_baseline(args: argparse.Namespace) -> int:
    import app
    from app import runs, storage
    from app.baselines import comparison_table

    cfg = load_config(args)
    results = app.baseline(cfg, address=args.address)
    trained = storage.read_json(storage.join(runs.run_dir(cfg), runs.METRICS))
    log.info(comparison_table(trained["test"] if trained else None, results, cfg.model.kind))
    log.info(f"written: {storage.join(runs.run_dir(cfg), runs.BASELINES)}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from app.report import write_report

    log.info(f"written: {write_report(args.run_dir)}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from app.export import export
    from app.predictor import load_predictor

    load_predictor(args.checkpoint)  # a bad checkpoint is refused with the flag's name
    out = export(args.checkpoint, args.output, args.overwrite)
    log.info(f"exported to {out}; see {out / 'README.md'}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from app import serve as serving
    from app import storage
    from app.predictor import load_predictor

    token_sha256 = serving.token_digest(args.token_file, args.host)  # a listener with no token: refused first
    args.checkpoint = storage.absolute(args.checkpoint)  # replicas do not run in this directory
    predictor = load_predictor(args.checkpoint)  # a bad checkpoint fails before Ray starts
    options = serving.ServeOptions(replicas=args.replicas, cpus_per_replica=args.cpus_per_replica,
                                   max_rows=args.max_rows, max_body_bytes=int(args.max_body_mb * 2**20),
                                   max_batch_size=args.max_batch_size, batch_wait_s=args.batch_wait_ms / 1000,
                                   max_ongoing_requests=args.max_ongoing_requests, token_sha256=token_sha256)
    serving.run(args.checkpoint, epoch=predictor.epoch, options=options, host=args.host, port=args.port,
                address=args.address)
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    from app.submit import submit

    return submit(args.job_command, args.job_args, address=args.address)


def main(argv: list[str] | None = None) -> int:
    """Run one command; its exit code (the process is not ended here: see `entry`)."""
    from app import logs

    logs.to_terminal()  # the app logger's lines, as this command line has always shown them
    # Everything this process prints, the app's lines, Ray's, the workers' and a traceback,
    # goes out with the credentials of URIs in it replaced by *** (app/redact.py).
    with redacted_output(), interrupts() as received:
        args = build_parser().parse_args(argv)
        try:
            return args.handler(args)
        except (KeyboardInterrupt, SystemExit) as e:
            signum = received()
            if isinstance(e, SystemExit) and signum is None:
                raise  # (a SystemExit that a signal's handler raised is an interruption)
            print(f"interrupted: {getattr(args, 'stopped', f'{args.command} stopped')}", file=sys.stderr)
            return EXIT_CODES[signum or signal.SIGINT]
        except Exception as e:  # noqa: BLE001 - sorted into "bad input" and "bug" right here
            user_error = find_user_error(e)
            if user_error is None:
                traceback.print_exc()  # here, while the output is redacted
                return 1
            print(f"error: {redact(str(user_error))}", file=sys.stderr)
            return 2


EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}  # 128 + the signal's number, as a shell reports it


@contextmanager
def interrupts() -> Iterator[Callable[[], int | None]]:
    """For the block, SIGTERM raises KeyboardInterrupt in the main thread as SIGINT does, so
    that either unwinds the command the same way (its run folder's lease released, a staging
    copy deleted, an output's claim given back). Yields a function that says which of them
    arrived (None: neither).

    Other handlers take over while the command runs: `ray.init` installs its own SIGTERM
    handler (`sys.exit`), and `TorchTrainer.fit()` its own SIGINT handler, which aborts the
    run, stopping its workers, then exits (app/runner.py turns that into KeyboardInterrupt).
    Which signal came is therefore read from Python's wakeup file descriptor, which gets the
    number of every signal that any Python handler receives. The library installs none."""
    if threading.current_thread() is not threading.main_thread():  # signal handlers: main thread only
        yield lambda: None
        return

    def on_sigterm(signum: int, frame) -> None:
        stop = signal.getsignal(signal.SIGINT)
        if callable(stop) and stop is not signal.default_int_handler:
            # Ray Train's during fit() (it stops the workers, then exits) or Ray Tune's (it ends
            # the sweep, state saved): a SIGTERM stops them as a Ctrl-C does
            stop(signal.SIGINT, frame)
            return
        raise KeyboardInterrupt

    reader, writer = socket.socketpair()
    reader.setblocking(False)
    writer.setblocking(False)
    saved_fd = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
    saved = signal.signal(signal.SIGTERM, on_sigterm)
    arrived: list[int] = []

    def received() -> int | None:
        try:
            arrived.extend(reader.recv(4096))
        except BlockingIOError:
            pass
        return next((s for s in (signal.SIGTERM, signal.SIGINT) if s in arrived), None)

    try:
        yield received
    finally:
        signal.signal(signal.SIGTERM, saved if saved is not None else signal.SIG_DFL)
        signal.set_wakeup_fd(saved_fd)
        reader.close()
        writer.close()


def entry() -> NoReturn:
    """The `raytab` command and `python -m app`: run the command, then end the process
    without the interpreter's teardown of the modules it loaded (app/ray_compat.py)."""
    from app.ray_compat import quick_exit

    quick_exit(main())
