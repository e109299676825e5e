"""Text templates that turn a config into the text the language model embeds (Table A10 of
"Efficient Hyper-parameter Search for LoRA via Language-aided Bayesian Optimization").

* ``plain`` (Table A10a): ``rank(r)=8, Scaling factor(α)=16, ...`` - names and values only.
* ``domain`` (Table A10b): one explanation paragraph per hyperparameter (its role and its
  interactions with the others), then the values. The paragraphs are the paper's, verbatim
  except that the two '|' of the extracted text are written as the em dashes they stand for.
* a user file: Jinja2 (``{{ rank }}``) when it contains ``{{`` or ``{%``, else a Python format
  string (``{rank}``). Names available: every parameter and fixed value of the space, ``alpha``
  (= ``alpha_ratio * rank``, when both exist) and, for Jinja2, ``params`` (searched name -> value).

The built-in templates show the searched parameters in the paper's order (rank, alpha, dropout,
batch size, learning rate), then any other parameter as ``name=value`` / ``* name: value``;
``alpha_ratio`` is shown as the absolute alpha, as in the paper. Fixed values are left out: they
are the same in every text and would only dilute the embedding.
"""

from __future__ import annotations

import string
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jinja2
import jinja2.meta

from lmtune.errors import InputError
from lmtune.space import SearchSpace

BUILTIN = ("domain", "plain")

#: Display names (Table A10) of known LoRA parameters; ``alpha_ratio`` is displayed as alpha.
LABELS = {
    "rank": "rank(r)",
    "alpha": "Scaling factor(α)",
    "dropout": "Dropout Rate",
    "batch_size": "Batch Size",
    "learning_rate": "Learning Rate",
    "variant": "LoRA variant",
}

#: Table A10b explanations; ``variant`` is lmtune's own (the paper tunes each variant separately).
EXPLANATIONS = {
    "rank": "* Rank (r): Controls adapter capacity by setting the low-rank dimension, higher r increases "
            "expressivity (and memory/compute) but raises overfitting risk. If you raise r, consider stronger "
            "regularization or a lower learning rate.",
    "alpha": "* Scaling factor (α): Scales the LoRA update; the effective update magnitude is α / r, so setting "
             "α ≈ r keeps update strength stable. Larger alpha amplifies adaptation but can destabilize training "
             "if LR is high.",
    "dropout": "* Dropout: Probability of dropping the adapter path to regularize training; higher dropout curbs "
               "overfitting, especially with large r or small datasets. With higher dropout you can often afford "
               "slightly larger alpha or LR without instability.",
    "batch_size": "* Batch size: Number of samples per optimizer step—larger batches give smoother gradients and "
                  "typically permit a proportionally larger learning rate (linear-scaling rule) at the cost of more "
                  "memory. Small batches may need gradient accumulation or a reduced LR.",
    "learning_rate": "* Learning rate: Step size for adapter parameters—too high can diverge (especially with large "
                     "alpha/r), too low slows convergence. Tune in conjunction with batch size and consider "
                     "schedules (e.g., cosine) to balance speed and stability.",
    "variant": "* LoRA variant: lora scales the update by α / r; rslora by α / √r, which keeps large ranks "
               "effective; dora adds a learned magnitude per output; pissa starts from the principal singular "
               "components of the weights.",
}

PAPER_ORDER = ("rank", "alpha", "dropout", "batch_size", "learning_rate")


def format_value(value: Any) -> str:
    """Shortest faithful text of a value: ``8``, ``8192`` (an integral alpha), ``0.25``, ``5e-06``."""
    if isinstance(value, bool) or not isinstance(value, float):
        return str(value)
    if value.is_integer() and abs(value) >= 1:
        return str(int(value))
    return repr(value)


class Template:
    """Renders a config (a mapping of parameter values) to text for a given space."""

    def __init__(self, spec: str | Path, space: SearchSpace):
        self.space = space
        self.searched = [p.name for p in space.params]
        self.name = str(spec)
        if self.name in BUILTIN:
            self._render = self._plain if self.name == "plain" else self._domain
            return
        path = Path(spec)
        if not path.is_file():
            raise InputError("template", f"{spec!r} is neither a built-in template ({', '.join(BUILTIN)}) nor a file")
        self._render = self._compile(path.read_text())

    def render(self, config: Mapping[str, Any]) -> str:
        return self._render(self._values(config))

    # -- the variables a template sees ----------------------------------------------------------
    def _values(self, config: Mapping[str, Any]) -> dict[str, Any]:
        values = {**self.space.fixed, **config}
        if "alpha_ratio" in values and "rank" in values and "alpha" not in values:
            alpha = values["alpha_ratio"] * values["rank"]
            values["alpha"] = int(alpha) if float(alpha).is_integer() else alpha
        return values

    def _shown(self) -> list[str]:
        """Variables shown by the built-ins: the searched parameters (alpha for alpha_ratio), paper order first."""
        shown = ["alpha" if name == "alpha_ratio" else name for name in self.searched]
        return [name for name in PAPER_ORDER if name in shown] + [n for n in shown if n not in PAPER_ORDER]

    # -- built-ins ------------------------------------------------------------------------------
    def _plain(self, values: dict[str, Any]) -> str:
        return ", ".join(f"{LABELS.get(name, name)}={format_value(values[name])}" for name in self._shown())

    def _domain(self, values: dict[str, Any]) -> str:
        shown = self._shown()
        lines = [EXPLANATIONS[name] for name in shown if name in EXPLANATIONS]
        lines += [f"* {LABELS.get(name, name)}: {format_value(values[name])}" for name in shown]
        return "\n".join(lines)

    # -- user files -----------------------------------------------------------------------------
    def _compile(self, text: str):
        names = set(self._values(next(self.space.iter_pool()))) | {"params"}
        if "{{" in text or "{%" in text:
            env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=False)
            try:
                used = jinja2.meta.find_undeclared_variables(env.parse(text))
                compiled = env.from_string(text)
            except jinja2.TemplateSyntaxError as exc:
                raise InputError("template", f"{self.name}: Jinja2 syntax error: {exc.message}") from None
            self._check_names(used, names)
            searched = self.searched
            return lambda values: compiled.render(**values, params={n: values[n] for n in searched})
        try:
            used = {field.split(".")[0].split("[")[0] for _, field, _, _ in string.Formatter().parse(text) if field}
        except ValueError as exc:
            raise InputError("template", f"{self.name}: bad format string: {exc}") from None
        self._check_names(used, names - {"params"})
        return lambda values: text.format(**values)

    def _check_names(self, used: set[str], names: set[str]) -> None:
        unknown = sorted(used - names)
        if unknown:
            raise InputError("template", f"{self.name} uses unknown name {unknown[0]!r}; "
                             f"available: {', '.join(sorted(names))}")
        if "params" in used:
            return
        covered = used | ({"alpha_ratio"} if "alpha" in used else set())
        missing = [name for name in self.searched if name not in covered]
        if missing:
            raise InputError("template", f"{self.name} does not show searched parameter {missing[0]!r}: configs "
                             "that differ only in it would get the same text")
