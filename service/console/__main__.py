"""``python -m service.console``: the review console alone (as ``python -m service console``)."""

from __future__ import annotations

import os
import sys

from service import logs
from service.console.app import run_console
from service.errors import ConfigError
from service.settings import Settings


def main() -> int:
    try:
        settings = Settings.from_env(os.environ)
        logs.configure(settings.log_level, settings.log_format)
        run_console(settings)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
