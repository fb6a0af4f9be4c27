"""Command line: ``python -m service {run,sink,console,local,publish}``."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys

from service import logs
from service.errors import ConfigError
from service.policy import Thresholds, load_policy
from service.runner import Runner
from service.settings import Settings


async def _run(settings: Settings) -> None:
    policy = load_policy(
        settings.policy_file,
        Thresholds(reject=settings.reject_threshold, review=settings.review_threshold),
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await Runner(settings, policy).run(stop)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m service", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("run", help="consume requests, moderate them, publish verdicts")
    commands.add_parser("sink", help="turn human-review completion events into final verdicts")
    commands.add_parser("console", help="the self-hosted review console (web)")
    local = commands.add_parser(
        "local", help="everything on this machine: embedded broker, pipeline, sink, console"
    )
    local.add_argument("--no-console", action="store_true", help="leave the console out")
    publish = commands.add_parser("publish", help="send image files, URLs or s3:// refs")
    publish.add_argument("targets", nargs="+", metavar="PATH|URL|s3://bucket/key")
    publish.add_argument("--final", action="store_true", help="wait past review for people")
    publish.add_argument("--timeout", type=float, default=60.0, help="seconds to wait")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = Settings.from_env(os.environ)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    logs.configure(settings.log_level, settings.log_format)
    # Heavy or optional parts are imported only by the command that needs them.
    try:
        if args.command == "run":
            asyncio.run(_run(settings))
        elif args.command == "sink":
            from service.review.sink import run_sink  # noqa: PLC0415

            run_sink(settings)
        elif args.command == "console":
            from service.console.app import run_console  # noqa: PLC0415

            run_console(settings)
        elif args.command == "local":
            from service.local_stack import run_local_stack  # noqa: PLC0415

            return asyncio.run(run_local_stack(settings, with_console=not args.no_console))
        elif args.command == "publish":
            from service.submit import submit  # noqa: PLC0415

            return asyncio.run(
                submit(settings, args.targets, final=args.final, timeout_s=args.timeout)
            )
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
