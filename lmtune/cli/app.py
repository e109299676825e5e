"""The Typer apps every command module registers on, and the console they print progress to."""

from typing import Annotated

import typer
from rich.console import Console

from lmtune.cli.usage import LmtuneGroup
from lmtune.version import __version__

# Plain click help (no rich panels): it wraps well in narrow terminals and shows no type placeholders.
app = typer.Typer(cls=LmtuneGroup, no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False,
                  rich_markup_mode=None,
                  help="Choose LoRA configs, base models and decoding settings with few expensive runs.")
lora_app = typer.Typer(rich_markup_mode=None,
                       help="Search LoRA fine-tuning hyperparameters (rank, alpha, learning rate, batch, dropout).")
app.add_typer(lora_app, name="lora")


def _print_version(value: bool) -> None:
    if value:
        print(f"lmtune {__version__}")
        raise typer.Exit()


@app.callback()
def _options(version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                                   help="Print lmtune's version and exit.")] = False) -> None:
    """Choose LoRA configs, base models and decoding settings with few expensive runs."""

bench_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None,
                        help="Benchmarks: search methods on replayable result tables, model selection.")
app.add_typer(bench_app, name="bench")

#: Progress and log lines go to stderr; results go to stdout.
console = Console(stderr=True, soft_wrap=True)
