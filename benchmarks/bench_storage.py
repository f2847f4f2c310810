"""Study storages under load: 1, 2, 4 and 8 worker processes (``harness study --workers N``) on
SQLite, Optuna's journal file and PostgreSQL, each running a study of cheap trials (``ttfs`` on
``digits`` from a cached ANN, evaluated on 100 test images).

Tracking goes where a user of that storage would send it: SQLite and the journal with an MLflow
SQLite store beside them, PostgreSQL with an ``mlflow server`` whose store is PostgreSQL. Measured
per cell: trials per minute between the first trial's start and the last one's end (Optuna's own
timestamps, so process start-up is left out), the wall time of the whole command, failed trials,
and lines of the workers' output that mention a locked database. On a machine with few cores the
trials themselves saturate it long before any storage does, so a second part runs processes of
trivial Optuna trials against each storage (the heartbeat on): what the storage alone sustains.
Written to ``STORAGE.md``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import _machine

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

WORKERS = (1, 2, 4, 8)
BARE_WORKERS = (1, 2, 4, 8, 16)
STORAGES = ("sqlite", "journal", "postgresql")
TRIALS = int(os.environ.get("HARNESS_BENCH_STORAGE_TRIALS", "24"))
OUT = Path(__file__).parent / "STORAGE.md"


def _study(tmp: Path, storage: str, tracking: str, workers: int, name: str) -> dict:
    import optuna

    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking}
    cmd = [sys.executable, "-m", "harness", "study", "--method", "ttfs", "--dataset", "digits", "--epochs", "2",
           "--trials", str(TRIALS), "--sampler", "random", "--storage", storage, "--study-name", name,
           "--workers", str(workers), "--eval-limit", "100", "--reevaluate", "0", "--no-progress",
           "--set", "fig2=false", "--set", "t_max_sweep=16"]
    t0 = time.perf_counter()
    # run in the cell's folder: a SQLite-tracked study keeps its artifacts in ./mlartifacts
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=3600, cwd=tmp)
    wall = time.perf_counter() - t0
    study = optuna.load_study(study_name=name, storage=_optuna_storage(storage))
    trials = [t for t in study.trials if not t.user_attrs.get("harness.surplus")]
    done = [t for t in trials if t.state.name == "COMPLETE"]
    span = (max(t.datetime_complete for t in done) - min(t.datetime_start for t in done)).total_seconds() if done else 0
    # steady state: from the moment the last worker started its first trial
    firsts: dict = {}
    for t in trials:
        w = t.user_attrs.get("harness.worker")
        if t.datetime_start and (w not in firsts or t.datetime_start < firsts[w]):
            firsts[w] = t.datetime_start
    all_in = max(firsts.values()) if firsts else None
    late = [t for t in done if all_in and t.datetime_complete > all_in]
    steady = (max(t.datetime_complete for t in late) - all_in).total_seconds() if late else 0
    locked = sum("locked" in line.lower() for line in proc.stderr.splitlines())
    return dict(rc=proc.returncode, complete=len(done), failed=sum(t.state.name == "FAIL" for t in trials),
                per_min=60 * len(done) / span if span else 0.0, wall=wall, locked=locked,
                steady=60 * len(late) / steady if steady else 0.0, workers_seen=len(firsts),
                err=proc.stderr.strip().splitlines()[-1] if proc.returncode else "")


def _bare_worker(storage: str, name: str, trials: int, out: Path) -> subprocess.Popen:
    """A process that runs ``trials`` trials of a trivial objective against ``storage``, with the
    heartbeat a harness study uses: what the storage alone sustains."""
    code = f"""
import json, time, warnings, optuna
warnings.simplefilter("ignore")
optuna.logging.set_verbosity(optuna.logging.ERROR)
from harness.studies import open_storage
st = open_storage({storage!r}, heartbeat=10)  # as a study opens it (the journal has no heartbeat)
errors = 0
study = optuna.create_study(study_name={name!r}, storage=st, load_if_exists=True)
t0 = time.perf_counter(); done = 0
while done < {trials}:
    try:
        study.optimize(lambda t: t.suggest_float("x", 0, 1) ** 2, n_trials=1)
        done += 1
    except Exception as exc:
        errors += 1
        if errors > 1000: break
json.dump(dict(done=done, errors=errors, s=time.perf_counter() - t0), open({str(out)!r}, "w"))
"""
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _bare(storage: str, workers: int, name: str, tmp: Path, trials: int = 200) -> dict:
    import json

    import optuna

    optuna.create_study(study_name=name, storage=_optuna_storage(storage), load_if_exists=True)
    outs = [tmp / f"{name}-{i}.json" for i in range(workers)]
    procs = [_bare_worker(storage, name, trials, o) for o in outs]
    errs = [p.communicate(timeout=1800)[1] for p in procs]
    res = [json.loads(o.read_text()) if o.exists() else dict(done=0, errors=-1, s=0) for o in outs]
    done, wall = sum(r["done"] for r in res), max(r["s"] for r in res)
    locked = sum("locked" in e.lower() for e in errs)
    return dict(per_s=done / wall if wall else 0.0, done=done, errors=sum(max(r["errors"], 0) for r in res),
                locked=locked, crashed=sum(r["errors"] < 0 for r in res))


def _optuna_storage(spec: str):
    from harness.studies import open_storage

    return open_storage(spec)


def _spec(storage: str, folder: Path, postgresql: str) -> str:
    return {"sqlite": f"sqlite:///{folder}/optuna.db", "journal": f"journal:{folder}/journal.log",
            "postgresql": postgresql}[storage]


def _write_section(key: str, lines: list[str]) -> None:
    """Replace section ``key`` of STORAGE.md (each test writes its own; the other is kept)."""
    head = ["# Study storage under load", "", "Written by `benchmarks/bench_storage.py` (`make bench`); each section by",
            "its own test.", ""]
    begin, end = f"<!-- {key} -->", f"<!-- /{key} -->"
    text = OUT.read_text() if OUT.exists() else "\n".join(head) + "\n"
    block = "\n".join([begin, *lines, end])
    if begin in text and end in text:
        text = text[:text.index(begin)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    OUT.write_text(text)
    print("\n".join(lines))


@pytest.mark.timeout(7200)
def test_study_workers_under_load(tmp_path, benchmark):
    from harness.config import RunConfig
    from harness.runner import run

    from services import mlflow_server, postgres

    os.environ["HARNESS_CACHE_DIR"] = str(tmp_path / "cache")
    # the ANN every trial converts (the study's own settings), trained once into the cache
    run(RunConfig.build(method="ann", dataset="digits", epochs=2, progress=False, track=False))
    rows = []

    def measure():
        with postgres(("mlflow",) + tuple(f"optuna{w}" for w in WORKERS)) as pg:
            with mlflow_server(f"{pg}/mlflow", tmp_path / "artifacts") as server:
                for storage in STORAGES:
                    for w in WORKERS:
                        d = tmp_path / f"{storage}-{w}"
                        d.mkdir()
                        spec = _spec(storage, d, f"{pg}/optuna{w}")
                        tracking = server if storage == "postgresql" else f"sqlite:///{d}/mlruns.db"
                        rows.append((storage, w, _study(d, spec, tracking, w, f"load-{storage}-{w}")))

    benchmark.pedantic(measure, rounds=1, iterations=1)
    lines = [f"## `harness study --workers N`: {TRIALS} `ttfs` trials on `digits` (cached ANN, 100 test images each)",
             "", f"- date: {time.strftime('%Y-%m-%d %H:%M')}", f"- machine: {_machine()}", "",
             "trials/min over all trials (first start to last end) and in steady state (after the last worker",
             "started its first trial); 'locked' counts lines of the workers' output mentioning a locked database.",
             "Each worker runs torch with its share of the cores (`OMP_NUM_THREADS` = cores // workers).", "",
             "| storage | workers | trials/min | steady trials/min | wall s | complete | failed | 'locked' lines | exit |",
             "|---|---|---|---|---|---|---|---|---|"]
    for storage, w, r in rows:
        lines.append(f"| {storage} | {w} | {r['per_min']:.1f} | {r['steady']:.1f} | {r['wall']:.0f} | {r['complete']} | "
                     f"{r['failed']} | {r['locked']} | {r['rc']}{' ' + r['err'][:80] if r['err'] else ''} |")
    _write_section("workers", lines)
    assert all(r["rc"] == 0 and r["complete"] == TRIALS for _, _, r in rows), rows


@pytest.mark.timeout(7200)
def test_storage_alone_under_load(tmp_path, benchmark):
    from services import postgres

    bare = []

    def measure():
        with postgres(tuple(f"bare{w}" for w in BARE_WORKERS)) as pg:
            for storage in STORAGES:
                for w in BARE_WORKERS:
                    d = tmp_path / f"bare-{storage}-{w}"
                    d.mkdir()
                    spec = _spec(storage, d, f"{pg}/bare{w}")
                    bare.append((storage, w, _bare(spec, w, f"bare-{storage}-{w}", d)))

    benchmark.pedantic(measure, rounds=1, iterations=1)
    lines = ["## The storage alone: processes running 200 trivial trials each (heartbeat on, as in a study)", "",
             f"- date: {time.strftime('%Y-%m-%d %H:%M')}", f"- machine: {_machine()}", "",
             "| storage | processes | trials/s | errors | 'locked' lines | crashed processes |", "|---|---|---|---|---|---|"]
    for storage, w, r in bare:
        lines.append(f"| {storage} | {w} | {r['per_s']:.1f} | {r['errors']} | {r['locked']} | {r['crashed']} |")
    _write_section("alone", lines)
