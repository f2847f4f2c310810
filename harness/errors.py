"""Errors the user can act on. The CLI prints them without a traceback and exits with code 2."""

from __future__ import annotations

import contextlib
import difflib
import re
import threading
from collections.abc import Iterable

_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b[@-_]")  # terminal escape sequences (colours, cursor moves)
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def printable(text: str) -> str:
    """``text`` as one terminal-safe message: terminal colour and cursor codes (which a library's or
    a plug-in's error may carry) removed, other control characters shown as spaces."""
    return _CONTROL.sub(" ", _ANSI.sub("", text))


class HarnessError(Exception):
    """Base class for errors caused by input (names, values, files, stores)."""

    exit_code = 2


class UnknownNameError(HarnessError, KeyError):
    """A name that is not in a registry (or not a valid key), with close matches suggested."""

    def __init__(self, kind: str, name: str, valid: Iterable[str]):
        self.kind, self.name, self.valid = kind, name, sorted(valid)
        super().__init__(self.message)

    @property
    def message(self) -> str:
        close = difflib.get_close_matches(self.name, self.valid, n=3, cutoff=0.5)
        hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        return f"unknown {self.kind} {self.name!r}.{hint} Valid: {', '.join(self.valid)}."

    def __str__(self) -> str:  # KeyError would quote the whole message otherwise
        return self.message


class ConfigError(HarnessError, ValueError):
    """An invalid value: the message names the parameter and its valid range."""


class DataError(HarnessError):
    """Missing, corrupt or truncated data: the message names the file or where it looked."""


class OutputError(HarnessError):
    """An output file or folder cannot be written; the message names it and says what was kept."""


class TrackingError(HarnessError):
    """The tracking store cannot be opened or written."""


class DivergedError(HarnessError):
    """Training produced a non-finite loss."""


class StudyError(HarnessError):
    """A study that cannot start or continue (bad storage, objective or grid)."""


class ReportError(HarnessError):
    """The report cannot be made (no store, no experiment, no runs)."""


class NirUnsupported(HarnessError):
    """A network has no single-step SpikingJelly form NIR could hold; the message says what it has
    that NIR cannot express (a run notes it and keeps ``network.pt`` alone)."""


class InvariantError(HarnessError):
    """A run broke a law every correct evaluation obeys (e.g. more SynOps than the network's
    capacity): a bug in the method or in the harness, never a number to report."""

    exit_code = 3

    def __init__(self, what: str, problems: list[str]):
        self.problems = list(problems)
        super().__init__(f"{what} broke {len(problems)} invariant{'s' if len(problems) > 1 else ''} (a bug in "
                         "the method or the harness; nothing was logged): " + "; ".join(problems[:6]))


class Interrupted(BaseException):
    """SIGINT or SIGTERM, raised where the program is by the handler the CLI installs; the CLI
    exits with 128 + the signal number. A BaseException, so that no ``except Exception`` (Lightning's,
    Optuna's, MLflow's) mistakes it for a failure to recover from."""

    def __init__(self, signum: int):
        import signal

        self.signum = signum
        self.exit_code = 128 + signum
        self.note: str | None = None  # what was done about the interrupted work, if not the default
        super().__init__(signal.Signals(signum).name)


PHASE = ["starting"]  # what the current run is doing, for the message of an interruption

_HOLD = threading.local()  # per thread: depth of uninterrupted() blocks and a held signal


def on_signal(signum: int, frame=None) -> None:
    """The CLI's SIGINT/SIGTERM handler: raise :class:`Interrupted` where the program is, or, inside
    an :func:`uninterrupted` block of the main thread (where handlers run), when the block ends."""
    if getattr(_HOLD, "depth", 0):
        _HOLD.pending = signum
        return
    raise Interrupted(signum)


@contextlib.contextmanager
def uninterrupted():
    """Hold a signal until the block ends. For the short MLflow writes made while training: one cut
    in the middle leaves SQLAlchemy's session half-rolled-back, and its pool logs a traceback on
    the way out although the interruption itself is handled."""
    _HOLD.depth = getattr(_HOLD, "depth", 0) + 1
    try:
        yield
    finally:
        _HOLD.depth -= 1
        pending = getattr(_HOLD, "pending", None)
        if _HOLD.depth == 0 and pending is not None:
            _HOLD.pending = None
            raise Interrupted(pending)


def set_phase(what: str) -> None:
    PHASE[0] = what
