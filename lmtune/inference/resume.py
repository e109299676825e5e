"""What a run of ``lmtune infer`` finds when it resumes a study: its spend journal and its account.

The spend journal (``lmtune.llm.cache``) is the truth about what a study has spent, so a study keeps one journal
file for good: the first run records its path (the response cache, or ``OUTPUT_DIR/spend.sqlite`` without a
cache) and its account in the study, and later runs use that file whatever their ``cache`` says. A study
whose journal file is gone (or that was created before journals) starts its account from what its trials
recorded, which misses the calls of a run that was killed mid-call; lmtune warns when that happens.

A trial whose process was killed is failed as interrupted and queued again by ``lmtune.runtime.orphans`` (for
every command); its calls are in the journal, counted.
"""

from __future__ import annotations

import logging
import uuid
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial

from lmtune import attrs
from lmtune.llm.cache import ResponseStore, SpendJournal
from lmtune.runtime.loop import worker_id

log = logging.getLogger(__name__)


def open_journal(study: optuna.Study, cache: ResponseStore | None, output_dir: Path | None) -> SpendJournal:
    """The study's spend journal: that of the file it recorded, else of the response cache, else of
    ``spend.sqlite``, else in memory."""
    if cache is not None:
        default: Path | None = cache.path
    else:
        default = Path(output_dir) / "spend.sqlite" if output_dir is not None else None
    recorded = study.user_attrs.get(attrs.SPEND_JOURNAL)
    if recorded is not None and Path(recorded).is_file():
        if cache is not None and Path(recorded).resolve() == cache.path.resolve():
            return cache.journal
        log.info("the spend of study %s is kept in %s", study.study_name, recorded)
        return ResponseStore(recorded).journal
    if recorded is not None:
        log.warning("the spend journal of study %s, %s, is gone; its spend starts from what its trials recorded "
                    "(calls of a run killed mid-call are missing from that)", study.study_name, recorded)
    if default is None:
        return ResponseStore(":memory:").journal
    study.set_user_attr(attrs.SPEND_JOURNAL, str(default.resolve()))
    return (cache if cache is not None else ResponseStore(default)).journal


def spend_account(study: optuna.Study, journal: SpendJournal, trials: list[FrozenTrial]) -> str:
    """The study's account in ``journal``, opened with what its trials recorded if the journal lacks it."""
    account = study.user_attrs.get(attrs.SPEND_ACCOUNT)
    if account is None:
        account = uuid.uuid4().hex
        study.set_user_attr(attrs.SPEND_ACCOUNT, account)
    if not journal.has_account(account):
        journal.open_account(account, sum(t.user_attrs.get(attrs.SPEND, 0.0) for t in trials), worker_id())
    return account
