"""A rank that ``harness run --nproc N`` starts (:mod:`harness.distributed`): ``python -m harness.rank
SETTINGS``, where SETTINGS is the run's :class:`~harness.config.RunConfig` as JSON. It runs the
same run as rank 0 with no tracking, no files and no progress bars; its errors are printed under
``harness (rank K)``, and its exit code tells rank 0 how it ended."""

from __future__ import annotations

import json
import os
import sys


def main(payload: str) -> int:
    from .cli import run_guarded
    from .config import RunConfig

    settings = json.loads(payload)
    settings["sets"] = tuple(settings.get("sets") or ())
    return run_guarded(RunConfig(**settings), f"harness (rank {os.environ.get('RANK', '?')})")


if __name__ == "__main__":  # pragma: no cover - started as a process by harness.distributed
    sys.exit(main(sys.argv[1]))
