"""The Typer apps every command module registers on, and the console they print progress to."""

import typer
from rich.console import Console

# Plain click help (no rich panels): it wraps well in narrow terminals and shows no type placeholders.
app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False, rich_markup_mode=None,
                  help="Choose LoRA configs, base models and decoding settings with few expensive runs.")
lora_app = typer.Typer(rich_markup_mode=None,
                       help="Search LoRA fine-tuning hyperparameters (rank, alpha, learning rate, batch, dropout).")
app.add_typer(lora_app, name="lora")
bench_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None,
                        help="Benchmarks: search methods on replayable result tables, model selection.")
app.add_typer(bench_app, name="bench")

#: Progress and log lines go to stderr; results go to stdout.
console = Console(stderr=True, soft_wrap=True)
