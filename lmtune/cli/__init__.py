"""The ``lmtune`` command: each command module parses flags into a config, calls one library function, prints.

The library logs through ``logging``; the CLI owns the terminal: it sends lmtune's log lines and progress
bars to stderr and results to stdout.
"""

from __future__ import annotations

import sys

from lmtune.cli import bench, hag, infer, lora, report, select, serve, workers  # noqa: F401  (they register their commands)
from lmtune.cli.app import app, console
from lmtune.cli.options import as_flags
from lmtune.errors import InputError, NoResult
from lmtune.runtime.loop import Interrupted

__all__ = ["app", "main"]


def main() -> None:
    """Entry point: one-line errors with exit code 2 for bad input, 1 for a search without any result, 130 for an
    interrupt. An error names the field; a field its message points at reads as its flag (``as_flags``)."""
    from lmtune.cli.progress import log_to

    log_to(console)
    try:
        app()
    except InputError as exc:
        print(f"error: {exc.field}: {as_flags(exc.message)}", file=sys.stderr)
        sys.exit(2)
    except NoResult as exc:
        print(f"error: {exc.field}: {as_flags(exc.message)}", file=sys.stderr)
        sys.exit(1)
    except Interrupted as exc:
        print(f"interrupted: {exc}; run the same command again to resume", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
