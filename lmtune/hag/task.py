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

BUILTIN = ("hag-mix",)
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
    if name == "hag-mix":
        task = HagTask("hag-mix", mix_instances(size, seed), mix_metric, "lmtune.hag.task:mix_metric", n=n,
                       max_tokens=max_tokens, stop=stop)
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
    """``exact`` (share of responses equal to ``answer``), ``vote`` (majority answer equals ``answer``), ``mix``
    (``hag-mix``'s metric, by the instance's ``type``), or a user's ``module:function(instance, responses)``: a score
    of one input's set of responses (``lmtune infer``'s ``make_instance_metric`` builds on a per-response check)."""
    builtin = {"exact": exact_share, "vote": vote_correct, "mix": mix_metric}
    if spec in builtin:
        return builtin[spec]
    if ":" not in spec:
        raise InputError("metric", f"unknown metric {spec!r}; allowed: exact, vote, mix, or module:function")
    function = import_function(spec, "metric")
    return lambda instance, responses: float(function(instance, responses))


def exact_share(instance: dict, responses: Sequence[str]) -> float:
    """The share of responses that are exactly the answer (whitespace at the ends ignored)."""
    answer = str(instance["answer"]).strip()
    return sum(r.strip() == answer for r in responses) / len(responses)


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
        text = "".join(rng.choice(LETTERS) for _ in range(rng.randint(2, 7)))
        return {"type": kind, "prompt": f"c:{text}>", "answer": text}
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
