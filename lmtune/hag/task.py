"""Tasks for per-input decoding: instances, a prompt template, and a metric over an input's n responses.

A HAG task is what ``lmtune infer`` takes plus one thing: a metric that scores a *set* of responses of one
input, ``metric(instance, responses) -> float`` (a ``module:function``, as ``lmtune infer --metric`` accepts),
so that validity-and-diversity or majority-vote metrics are as natural as exact match. The expected metric of
a decoding config on an input is the mean of that score over repeated, seeded requests of ``n`` responses.

Built in: ``hag-mix``, the offline task of lmtune's small ``hag-lm`` (``scripts/train_hag_lm.py``). It mixes
three kinds of input that want different decoding, each with its own metric:

* ``reverse`` (``r:kqzfa>`` -> ``afzqk``): exact answers. Metric: the share of the n responses that are exactly
  right (the expected single-response accuracy). The model learned from a teacher that makes a typo in 30% of
  its answers, spread thinly over positions and letters, so sampling at temperature 1 draws typos that greedy
  decoding never makes: greedy (or a low temperature) is best.
* ``letters`` (``d:4-qx>`` -> four distinct letters, none of q and x): open-ended requests. Metric: distinct
  valid responses / n. The teacher prefers a few letters (Zipf weights over a fixed letter order), so low
  temperatures repeat the same answer; high temperatures need a nucleus or top-k cut and a repetition penalty
  (which pushes down letters already used and the forbidden letters of the prompt) to stay valid.
* ``copy`` (``c:kqzfa>`` -> ``kqzfa``): graded difficulty. Metric: whether the majority answer of the n
  responses (first seen wins a tie) is right. For longer inputs the teacher is often wrong in a structured way
  (it starts from the second letter and goes on with random letters): the correct answer is still the most
  likely *answer*, but the most likely *first letter* is wrong, so greedy decoding fails where sampling and a
  vote succeed, as in "Self-Consistency Improves Chain of Thought Reasoning in Language Models"
  (arXiv:2203.11171). Short inputs are answered right either way.

``hag-spread``, for the same model, asks for decodings that lie further apart, so that one config for all inputs
leaves more on the table. Half its inputs are ``copy`` of 3 or 4 letters scored by whether *every* one of the n
responses is exactly right (pass^k of "τ-bench: A Benchmark for Tool-Agent-User Interaction in Real-World
Domains", arXiv:2406.12045, with k = n: an answer that must be the same each time it is asked): greedy decoding is
best, and any repetition penalty breaks it, since the answer repeats the prompt's letters. The other half are
``letters``, as in ``hag-mix``: hot decoding with a strong repetition penalty is best, and greedy decoding scores
1/n.
"""

from __future__ import annotations

import random
import string
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from lmtune.config import import_function, read_jsonl
from lmtune.errors import InputError

BUILTIN = ("hag-mix", "hag-spread")
#: ``metric(instance, responses) -> float``; higher is better.
SetMetric = Callable[[dict, list[str]], float]
LETTERS = string.ascii_lowercase
#: The teacher's preference order for ``letters`` answers (Zipf weights by rank in this order).
LETTER_ORDER = "etaoinshrdlucmfwypvbgkjqxz"
ZIPF_EXPONENT = 4.0
REVERSE_TYPO = 0.3
#: The share of ``copy`` answers that are a structured distractor, by input length.
COPY_DISTRACTOR = {2: 0.0, 3: 0.0, 4: 0.2, 5: 0.55, 6: 0.6, 7: 0.65}
KINDS = ("reverse", "letters", "copy")
#: ``hag-spread``'s kinds (in turn) and the length of its ``copy`` inputs.
SPREAD_KINDS = ("copy", "letters")
SPREAD_COPY_LENGTH = (3, 4)


@dataclass
class HagTask:
    """Instances, the template that turns one into the prompt, the set metric, and the request shape.

    ``n`` responses are asked per request (the metric scores them together); ``max_tokens`` and ``stop``
    bound each response.
    """

    name: str
    instances: list[dict]
    metric: SetMetric
    metric_name: str
    template: str = "{prompt}"
    n: int = 8
    max_tokens: int = 16
    stop: tuple[str, ...] | None = None

    def prompt(self, instance: dict) -> str:
        return self.template.format(**instance)

    def split(self, fractions: tuple[float, float], seed: int) -> dict[str, list[dict]]:
        """Seeded train/validation/test split; ``fractions`` are the validation and test shares."""
        rows = list(self.instances)
        random.Random(seed).shuffle(rows)
        n_val, n_test = (max(1, round(len(rows) * f)) for f in fractions)
        if len(rows) - n_val - n_test < 1:
            raise InputError("task", f"{len(rows)} instances are too few for a train/validation/test split")
        return {"test": rows[:n_test], "validation": rows[n_test:n_test + n_val], "train": rows[n_test + n_val:]}


def load_hag_task(name: str, *, metric: str | None = None, template: str | None = None, size: int = 600,
                  seed: int = 0, n: int = 8, max_tokens: int = 16, stop: tuple[str, ...] | None = None) -> HagTask:
    """``hag-mix`` (``size`` seeded instances) or a JSONL file of instances with a ``module:function`` metric: one
    template and one request shape, unlike ``lmtune infer``'s ``load_infer_task``, whose templates and stops are
    choices to search."""
    if name in BUILTIN:
        instances, default = (mix_instances, mix_metric) if name == "hag-mix" else (spread_instances, spread_metric)
        task = HagTask(name, instances(size, seed), default, metric_path(default), n=n, max_tokens=max_tokens,
                       stop=stop)
        if metric is not None:
            task.metric, task.metric_name = make_set_metric(metric), metric
    elif name.endswith((".jsonl", ".json")) or Path(name).exists():
        if metric is None:
            raise InputError("metric", "a task file needs a metric: module:function(instance, responses) -> float, "
                             "or one of exact, vote, mix")
        task = HagTask(Path(name).stem, _read_jsonl(Path(name)), make_set_metric(metric), metric, n=n,
                       max_tokens=max_tokens, stop=stop)
    else:
        raise InputError("task", f"unknown task {name!r}; allowed: {', '.join(BUILTIN)}, or a JSONL file")
    if template is not None:
        task.template = template
    _check_template(task.template, task.instances)
    return task


def _read_jsonl(path: Path) -> list[dict]:
    rows = read_jsonl(path, "task")
    if len(rows) < 3:
        raise InputError("task", f"{path} holds {len(rows)} instances; need at least 3 (train, validation, test)")
    return rows


def _check_template(template: str, instances: list[dict]) -> None:
    try:
        names = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as exc:
        raise InputError("template", f"malformed template {template!r}: {exc}") from None
    fields = set.intersection(*(set(row) for row in instances))
    for name in names:
        if name not in fields:
            raise InputError("template", f"template {template!r} uses {{{name}}}, which some instances lack; "
                             f"fields every instance has: {', '.join(sorted(fields))}")


# -- metrics -------------------------------------------------------------------------------------------------------


def make_set_metric(spec: str) -> SetMetric:
    """``exact`` (share of responses equal to ``answer``), ``all`` (every response equals ``answer``), ``vote``
    (majority answer equals ``answer``), ``mix`` and ``spread`` (``hag-mix``'s and ``hag-spread``'s metrics, by the
    instance's ``type``), or a user's ``module:function(instance, responses)``: a score of one input's set of
    responses (``lmtune infer``'s ``make_instance_metric`` builds on a per-response check)."""
    if spec in SET_METRICS:
        return SET_METRICS[spec]
    if ":" not in spec:
        raise InputError("metric", f"unknown metric {spec!r}; allowed: {', '.join(SET_METRICS)}, or module:function")
    function = import_function(spec, "metric")
    return lambda instance, responses: float(function(instance, responses))


def metric_path(spec: SetMetric | str) -> str:
    """A metric as ``module:function``, the form ``lmtune infer --metric`` imports (a built-in name, or a function,
    becomes its function's path; a user's ``module:function`` stays as it is)."""
    function = SET_METRICS.get(spec, spec) if isinstance(spec, str) else spec
    return function if isinstance(function, str) else f"{function.__module__}:{function.__name__}"


def exact_share(instance: dict, responses: Sequence[str]) -> float:
    """The share of responses that are exactly the answer (whitespace at the ends ignored)."""
    answer = str(instance["answer"]).strip()
    return sum(r.strip() == answer for r in responses) / len(responses)


def all_correct(instance: dict, responses: Sequence[str]) -> float:
    """1 when every response is exactly the answer (whitespace at the ends ignored)."""
    answer = str(instance["answer"]).strip()
    return float(all(r.strip() == answer for r in responses))


def vote_correct(instance: dict, responses: Sequence[str]) -> float:
    """1 when the most common response (first seen wins a tie) is the answer."""
    counts = Counter(r.strip() for r in responses)
    top = max(counts.values())
    winner = next(r.strip() for r in responses if counts[r.strip()] == top)
    return float(winner == str(instance["answer"]).strip())


def distinct_valid_share(instance: dict, responses: Sequence[str]) -> float:
    """``letters``: distinct valid responses / n; valid = ``count`` distinct lowercase letters, none forbidden."""
    count, forbidden = int(instance["count"]), set(instance["forbidden"])
    valid = {r.strip() for r in responses if _valid_letters(r.strip(), count, forbidden)}
    return len(valid) / len(responses)


def _valid_letters(text: str, count: int, forbidden: set[str]) -> bool:
    return (len(text) == count and len(set(text)) == count and all(c in LETTERS for c in text)
            and not forbidden.intersection(text))


def mix_metric(instance: dict, responses: Sequence[str]) -> float:
    """``hag-mix``'s metric: exact share for ``reverse``, distinct valid share for ``letters``, vote for ``copy``."""
    kind = instance["type"]
    if kind == "reverse":
        return exact_share(instance, responses)
    if kind == "letters":
        return distinct_valid_share(instance, responses)
    if kind == "copy":
        return vote_correct(instance, responses)
    raise ValueError(f"unknown hag-mix instance type {kind!r}")


def spread_metric(instance: dict, responses: Sequence[str]) -> float:
    """``hag-spread``'s metric: every response right for ``copy``, distinct valid share for ``letters``."""
    kind = instance["type"]
    if kind == "copy":
        return all_correct(instance, responses)
    if kind == "letters":
        return distinct_valid_share(instance, responses)
    raise ValueError(f"unknown hag-spread instance type {kind!r}")


SET_METRICS: dict[str, SetMetric] = {"exact": exact_share, "all": all_correct, "vote": vote_correct, "mix": mix_metric,
                                     "spread": spread_metric}


# -- the built-in task and the teacher the model learned from --------------------------------------------------------


def mix_instances(size: int, seed: int) -> list[dict]:
    """``size`` distinct seeded instances, a third of each kind (in turn), no prompt twice."""
    rng = random.Random(f"hag-mix:{seed}")
    rows, seen = [], set()
    while len(rows) < size:
        row = random_instance(KINDS[len(rows) % 3], rng)
        if row["prompt"] not in seen:
            seen.add(row["prompt"])
            rows.append(row)
    return rows


def spread_instances(size: int, seed: int) -> list[dict]:
    """``size`` distinct seeded ``hag-spread`` instances: ``copy`` of 3 or 4 letters and ``letters``, in turn."""
    rng = random.Random(f"hag-spread:{seed}")
    rows, seen = [], set()
    while len(rows) < size:
        kind = SPREAD_KINDS[len(rows) % 2]
        row = copy_instance(rng, *SPREAD_COPY_LENGTH) if kind == "copy" else random_instance(kind, rng)
        if row["prompt"] not in seen:
            seen.add(row["prompt"])
            rows.append(row)
    return rows


def copy_instance(rng: random.Random, shortest: int, longest: int) -> dict:
    text = "".join(rng.choice(LETTERS) for _ in range(rng.randint(shortest, longest)))
    return {"type": "copy", "prompt": f"c:{text}>", "answer": text}


def random_instance(kind: str, rng: random.Random) -> dict:
    if kind == "reverse":
        text = "".join(rng.choice(LETTERS) for _ in range(rng.randint(4, 8)))
        return {"type": kind, "prompt": f"r:{text}>", "answer": text[::-1]}
    if kind == "letters":
        count = rng.randint(3, 6)
        forbidden = "".join(sorted(rng.sample(LETTERS, rng.randint(1, 3))))
        return {"type": kind, "prompt": f"d:{count}-{forbidden}>", "answer": None, "count": count,
                "forbidden": forbidden}
    if kind == "copy":
        return copy_instance(rng, 2, 7)
    raise ValueError(f"unknown kind {kind!r}")


def teacher_response(instance: dict, rng: random.Random) -> str:
    """One answer from the noisy teacher ``hag-lm`` was trained on (see the module docstring)."""
    kind = instance["type"]
    if kind == "reverse":
        answer = list(instance["answer"])
        if rng.random() < REVERSE_TYPO:
            at = rng.randrange(len(answer))
            answer[at] = rng.choice([c for c in LETTERS if c != answer[at]])
        return "".join(answer)
    if kind == "letters":
        allowed = [c for c in LETTER_ORDER if c not in instance["forbidden"]]
        weights = {c: (LETTER_ORDER.index(c) + 1) ** -ZIPF_EXPONENT for c in allowed}
        chosen = []
        for _ in range(instance["count"]):
            pool = [c for c in allowed if c not in chosen]
            chosen.append(rng.choices(pool, weights=[weights[c] for c in pool])[0])
        return "".join(chosen)
    if kind == "copy":
        text = instance["answer"]
        if rng.random() < COPY_DISTRACTOR[len(text)]:
            return text[1] + "".join(rng.choice(LETTERS) for _ in range(len(text) - 1))
        return text
    raise ValueError(f"unknown kind {kind!r}")
