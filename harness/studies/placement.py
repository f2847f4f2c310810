"""Which trial may run: the study's places, as pure functions of the trials and the time (see
:mod:`harness.studies`).

The study ends when ``--trials`` trials have finished (complete or pruned), whichever worker ran
them. A worker starts a trial only while the finished trials and the trials *holding a place* are
fewer than that. A place is held by

* a running trial (but a surplus one: see :class:`harness.studies.trial.SurplusTrial`);
* a queued trial (a retry, a re-queued interrupted trial, ``enqueue_trial``) — when counting for a
  new trial; a worker deciding whether to start at all (``queued=False``) lets Optuna pop them;
* a trial that died moments ago and whose retry is not queued yet. Optuna's heartbeat fails a
  stale trial first and calls the retry callback after; a worker that counted in between would see
  a free place and take it with a new trial, and the retry would stay queued, never run. A dead
  trial is one that failed without the harness ending it (``harness.ended``); it holds its place
  for ``window_s`` seconds after it failed, or until its retry exists, and not at all if it cannot
  be retried (it is itself a retry).

Queued trials come before new ones in the order places are given out (:func:`place_key`).
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from typing import Any


def place_key(t: Any) -> tuple[int, int]:
    """The order in which trials hold the study's places: queued trials (retries of dead trials,
    re-queued interrupted ones, ``enqueue_trial``) before new ones, then by number."""
    queued = "failed_trial" in t.system_attrs or "fixed_params" in t.system_attrs
    return (0 if queued else 1, t.number)


def retried(t: Any, trials: Sequence[Any]) -> bool:
    """Whether a trial of ``trials`` is the retry (or re-queued copy) of ``t``."""
    return any(t.number in u.system_attrs.get("retry_history", ())
               or t.number in (u.user_attrs.get("harness.retry_of"), u.user_attrs.get("harness.retry_of_interrupted"))
               for u in trials)


def just_died(t: Any, trials: Sequence[Any], now: datetime.datetime, window_s: float) -> bool:
    """A trial that failed without the harness ending it less than ``window_s`` seconds before
    ``now``, can be retried (it is not itself a retry), and has no retry yet."""
    from optuna.trial import TrialState

    return (t.state == TrialState.FAIL and not t.user_attrs.get("harness.ended")
            and "failed_trial" not in t.system_attrs
            and t.datetime_complete is not None
            and (now - t.datetime_complete).total_seconds() < window_s and not retried(t, trials))


def places(trials: Sequence[Any], key: tuple[int, int] | None, window_s: float, now: datetime.datetime,
           queued: bool = True) -> tuple[int, int]:
    """(finished trials, trials holding a place ahead of ``key`` — all of them if ``key`` is None)
    among ``trials`` (Optuna ``FrozenTrial`` s) at time ``now`` (module docstring)."""
    from optuna.trial import TrialState

    fin = sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    held = 0
    for t in trials:
        if t.state == TrialState.RUNNING:
            holds, t_key = not t.user_attrs.get("harness.surplus"), place_key(t)
        elif t.state == TrialState.WAITING:
            holds, t_key = queued, place_key(t)
        elif just_died(t, trials, now, window_s):
            holds, t_key = True, (0, t.number)  # its retry will be queued, ahead of new trials
        else:
            continue
        held += holds and (key is None or t_key < key)
    return fin, held


def study_places(study: Any, key: tuple[int, int] | None, window_s: float, queued: bool = True) -> tuple[int, int]:
    """:func:`places` of a study's stored trials, now."""
    return places(study.get_trials(deepcopy=False), key, window_s, datetime.datetime.now(), queued)
