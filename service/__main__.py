"""Command line: ``python -m service run``."""

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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("run", help="consume requests, moderate them, publish verdicts")
    commands.add_parser("sink", help="turn human-review completion events into final verdicts")
    args = parser.parse_args(argv)

    try:
        settings = Settings.from_env(os.environ)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    logs.configure(settings.log_level, settings.log_format)
    try:
        if args.command == "run":
            asyncio.run(_run(settings))
        elif args.command == "sink":
            from service.review.sink import run_sink  # noqa: PLC0415  (faust is heavy: sink only)

            run_sink(settings)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
