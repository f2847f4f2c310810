"""The ``harness`` command line: ``run``, ``study``, ``report`` and ``ls``.

Start-up stays light: argparse plus the registries' description tables. torch, Lightning and
MLflow are imported only by the verbs that need them.
"""

from __future__ import annotations

import argparse
import sys

from ._version import __version__
from .errors import HarnessError, printable

STUDY_PARSER: list[argparse.ArgumentParser] = []  # the study verb's parser: its flags rebuild a worker's command
LS_KINDS = ("methods", "datasets", "models", "energy", "params", "metrics")


def _registry(kind: str):
    if kind == "methods":
        from .methods import METHODS
        return METHODS
    if kind == "datasets":
        from .datasets import DATASETS
        return DATASETS
    if kind == "models":
        from .models import MODELS
        return MODELS
    from .energy import ENERGY_MODELS
    return ENERGY_MODELS


def _add_run_flags(r: argparse.ArgumentParser) -> None:
    r.add_argument("--method", "-m", help="method key; compose transforms with '+', e.g. prune+ttfs (default: ann)")
    r.add_argument("--dataset", "-d", help="data set key, or module:factory (default: mnist-5k)")
    r.add_argument("--model", help="model key, or module:factory / file.py:factory (default: the method's choice)")
    r.add_argument("--weights", metavar="FILE.pt", help="a trained ANN's state_dict: no training, no ANN cache")
    r.add_argument("--no-baseline", dest="baseline", action="store_const", const=False,
                   help="skip the ANN baseline (no ann/* metrics, no energy ratios; surrogate and sharpen "
                        "then train no ANN at all)")
    r.add_argument("--seed", type=int, help="random seed (default: 0)")
    r.add_argument("--epochs", type=int, help="ANN training epochs (default: 15)")
    r.add_argument("--batch-size", type=int, dest="batch_size", help="training batch size (default: 64)")
    r.add_argument("--lr", type=float, help="learning rate (default: 1e-3)")
    r.add_argument("--act-l1", type=float, dest="act_l1", help="activation-L1 penalty for the ANN (default: 0)")
    r.add_argument("--device", choices=("auto", "cpu", "cuda"), help="default: auto")
    r.add_argument("--set", "-s", action="append", dest="sets", metavar="KEY=VALUE",
                   help="method parameter (repeatable); 'harness ls params --method M' lists them")
    r.add_argument("--config", metavar="FILE.yaml", help="YAML file of run settings (flags override it)")
    r.add_argument("--data-dir", dest="data_dir", help="where data files are found / downloaded")
    r.add_argument("--cache-dir", dest="cache_dir", help="ANN cache directory")
    r.add_argument("--time-bins", type=int, dest="time_bins", metavar="T",
                   help="event data: frames per sample, one simulation step each (default: the data set's)")
    r.add_argument("--time-window", type=float, dest="time_window", metavar="MS",
                   help="event data: frames of MS milliseconds instead of a fixed count")
    r.add_argument("--denoise", type=float, metavar="MS",
                   help="event data: drop events with no neighbour within MS milliseconds (tonic Denoise)")
    r.add_argument("--downsample", type=float, metavar="F",
                   help="event data: scale the sensor's x and y by F, e.g. 0.25 (tonic Downsample)")
    r.add_argument("--experiment", help="MLflow experiment (default from mlflow.yaml)")
    r.add_argument("--no-progress", dest="progress", action="store_const", const=False, help="hide progress bars")
    r.add_argument("--eval-batch-size", type=int, dest="eval_batch_size", metavar="N",
                   help="evaluation batch size (default: 500)")
    r.add_argument("--nproc", type=int, metavar="N",
                   help="processes sharing every evaluation, each on its slice of the test set (with --device cuda: "
                        "one GPU each); torchrun/SLURM set RANK and WORLD_SIZE instead (default: 1)")
    r.add_argument("--dist-timeout", type=float, dest="dist_timeout", metavar="S",
                   help="seconds a process waits for the others (start, collectives) before the run fails "
                        "(default: 1800)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="harness",
        description="Accuracy / sparsity / energy benchmark of spiking neural networks.",
        epilog="Examples:\n  harness run --method ttfs\n  harness run --method ann --dataset digits "
               "--output-json r.json\n  harness ls methods",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"snn-harness {__version__}")
    sub = p.add_subparsers(dest="verb", metavar="{run,study,report,ls}")
    sub.required = True

    r = sub.add_parser("run", help="run one method on one data set and model",
                       description="Train (or load the cached) ANN, apply a method, meter it, log to MLflow.")
    _add_run_flags(r)
    r.add_argument("--output-json", "-o", dest="output_json", metavar="FILE",
                   help="write the result record ('-': to stdout, instead of the summary)")
    r.add_argument("--no-track", dest="track", action="store_const", const=False, help="do not log to MLflow")

    st = sub.add_parser(
        "study", help="Optuna search over a method's parameters (one MLflow child run per trial)",
        description="Search a method's parameters with Optuna; re-running the same command resumes the study.",
        epilog="Examples:\n  harness study --method ttfs --trials 20 --objective test/accuracy:max "
               "--objective spikes_per_neuron:min\n  harness study --method rate --model cnn7 --sampler grid "
               "--grid synapse=0.001,0.005,0.01 --grid scale_firing_rates=1,10,100",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_run_flags(st)
    STUDY_PARSER[:] = [st]
    st.add_argument("--trials", "-n", type=int, default=20, help="finished trials wanted (default: 20)")
    st.add_argument("--objective", action="append", dest="objectives", metavar="METRIC:max|min",
                    help="repeatable; several make the study multi-objective (default: test/accuracy:max)")
    st.add_argument("--sampler", default=None, help="tpe, nsga2, random or grid (default: tpe; "
                    "grid when --grid is given)")
    st.add_argument("--grid", action="append", metavar="KEY=V1,V2,...", help="grid axis (repeatable)")
    st.add_argument("--storage", help="Optuna storage: an RDB URL or journal:FILE "
                    "(default: sqlite optuna.db beside the MLflow store)")
    st.add_argument("--study-name", dest="study_name", help="default: METHOD-MODEL-DATASET")
    st.add_argument("--n-jobs", dest="n_jobs", type=int, default=1, help="parallel trials (threads)")
    st.add_argument("--workers", type=int, default=1,
                    help="worker processes on this machine, all on one storage (default: 1); the same command "
                         "on other machines joins the study")
    st.add_argument("--worker-index", dest="worker_index", type=int, metavar="K",
                    help="this machine's (or task's) index: its workers are K*N .. K*N+N-1 for --workers N, "
                         "which seeds their samplers apart; worker 0 re-evaluates the best trials and closes the "
                         "study's MLflow run (default: $SLURM_ARRAY_TASK_ID or $JOB_COMPLETION_INDEX, else 0)")
    st.add_argument("--heartbeat", type=int, default=10, metavar="S",
                    help="seconds between a running trial's heartbeats; a trial silent for 3 of them is "
                         "failed and retried once (RDB storage; default: 10)")
    st.add_argument("--eval-limit", dest="eval_limit", type=int,
                    help="evaluate trials on the first N test images (best trials are re-evaluated on all)")
    st.add_argument("--reevaluate", type=int, default=3,
                    help="best trials re-evaluated on the full test set when --eval-limit is set (default: 3)")
    st.add_argument("--output-json", "-o", dest="output_json", metavar="FILE", help="write the study summary")

    rp = sub.add_parser("report", help="leaderboard and figures from the MLflow runs (HTML, Markdown, CSV)",
                        description="Read an experiment's runs from MLflow and write report.html, report.md, "
                                    "leaderboard.csv, runs.csv and the figures (PNG) into --out.")
    rp.add_argument("--experiment", help="MLflow experiment (default from mlflow.yaml)")
    rp.add_argument("--out", default="report", help="output directory (default: ./report)")
    rp.add_argument("--tracking-uri", dest="tracking_uri", help="MLflow store (default from mlflow.yaml / env)")
    rp.add_argument("--energy-model", dest="energy_model", default="cmos45-fp32",
                    help="energy model of the leaderboard and figures (default: cmos45-fp32)")

    ls = sub.add_parser("ls", help="list methods, datasets, models, energy models or a method's params")
    ls.add_argument("kind", choices=LS_KINDS)
    ls.add_argument("--method", help="with 'params' (or 'metrics'): the method whose parameters (metrics) to list")
    return p


def cmd_ls(args) -> int:
    if args.kind == "params":
        if not args.method:
            raise HarnessError("harness ls params needs --method M")
        from .methods import resolve

        classes = resolve(args.method)
        for cls in classes:
            prefix = "" if cls is classes[-1] else f"{cls.name}."
            print(f"{cls.name} parameters (--set {prefix}key=value):")
            rows = cls.Params.describe()
            if not rows:
                print("  (none)")
            for row in rows:
                rng = f"  range {row['range']}" if row["range"] else ""
                key = prefix + row["key"]
                print(f"  {key:<22} {row['type']:<18} default {row['default']}{rng}\n      {row['help']}")
        return 0
    if args.kind == "metrics":
        from .metrics import CORE, markdown_table

        specs = list(CORE)
        if args.method:
            from .methods import resolve

            for cls in resolve(args.method):
                specs += list(cls.metrics)
        print(markdown_table(specs), end="")
        return 0
    reg = _registry(args.kind)
    entries = list(reg.entries())
    width = max((len(e.name) for e in entries), default=0)
    for e in entries:
        origin = "" if e.origin == "snn-harness" else f"  [{e.origin}]"
        broken = reg.problem(e.name) if origin else None  # a plug-in is loaded to be listed as usable
        print(f"{e.name:<{width}}  {e.description}{origin}" + (f"  [BROKEN: {printable(broken)}]" if broken else ""))
    return 0


RUN_FIELDS = ("method", "dataset", "model", "weights", "baseline", "seed", "epochs", "batch_size", "lr", "act_l1",
              "device", "data_dir", "cache_dir", "experiment", "progress", "eval_batch_size", "nproc",
              "dist_timeout", "time_bins", "time_window", "denoise", "downsample")


def _run_config(args, **extra):
    from .config import RunConfig

    overrides = {f: getattr(args, f) for f in RUN_FIELDS}
    overrides.update(extra)
    if args.sets:
        overrides["sets"] = tuple(args.sets)
    return RunConfig.build(args.config, **overrides)


def cmd_run(args) -> int:
    from .runner import run

    to_stdout = args.output_json == "-"  # --output-json -: the record on stdout (for jq), nothing else
    cfg = _run_config(args, output_json=None if to_stdout else args.output_json, track=args.track)
    result = run(cfg)
    if to_stdout:
        import json

        print(json.dumps(result.to_record(), default=str))
        return 0
    m = result.metrics
    print(f"{result.method} on {result.dataset['name']} / {result.model} (seed {result.seed})")
    baseline = "ann/test/accuracy" in m
    acc = f"  test/accuracy        {m['test/accuracy']:.4f}"
    if baseline:
        acc += f"   (ANN {m['ann/test/accuracy']:.4f}, drop {m['test/accuracy_drop']:+.4f})"
    print(acc)
    print(f"  spikes_per_neuron    {m['spikes_per_neuron']:.4f}   activation_sparsity {m['activation_sparsity']:.4f}")
    print(f"  synops               {m['synops']:.4g}   macs {m['macs']:.4g}"
          + (f"   (ANN macs {m['ann/macs']:.4g})" if baseline else ""))
    energy = f"  energy cmos45-fp32   {m['energy_nJ/cmos45-fp32']:.4g} nJ"
    if baseline:
        energy += (f"   (ANN {m['ann/energy_nJ/cmos45-fp32']:.4g} nJ, "
                   f"ratio {m['energy_ratio/cmos45-fp32']:.3f})")
    print(energy)
    if result.tracking:
        print(f"  MLflow run {result.tracking['run_id']} in {result.tracking['tracking_uri']}")
    if cfg.output_json:
        print(f"  result record: {cfg.output_json}")
    return 0


def cmd_study(args) -> int:
    from .studies import Objective, StudyConfig, parse_grid, run_study, worker_argv

    cfg = _run_config(args, eval_limit=args.eval_limit)
    grid = parse_grid(args.grid)
    scfg = StudyConfig(
        run=cfg, trials=args.trials,
        objectives=tuple(Objective.parse(o) for o in (args.objectives or ["test/accuracy:max"])),
        sampler=args.sampler or ("grid" if grid else "tpe"), grid=grid, storage=args.storage,
        study_name=args.study_name, n_jobs=args.n_jobs, reevaluate=args.reevaluate,
        output_json=args.output_json, progress=cfg.progress, workers=args.workers, worker_index=args.worker_index,
        heartbeat=args.heartbeat, worker_command=lambda i: worker_argv(STUDY_PARSER[0], args, i))
    summary = run_study(scfg)
    states: dict[str, int] = {}
    for t in summary.trials:
        states[t["state"]] = states.get(t["state"], 0) + 1
    print(f"study {summary.study_name} ({summary.storage}): "
          + ", ".join(f"{n} {s.lower()}" for s, n in sorted(states.items())) + f"; {summary.wall_s:.1f} s")
    if summary.recovered:
        print(f"  trials of a dead worker, failed and re-queued: {summary.recovered}")
    retried = [t for t in summary.trials if t.get("retry_of") is not None]
    if retried:
        print("  retries: " + ", ".join(f"#{t['number']} of #{t['retry_of']} ({t['state'].lower()})" for t in retried))
    label = "Pareto front" if len(summary.objectives) > 1 else "best trial"
    print(f"  {label} ({', '.join(summary.objectives)}):")
    for t in summary.best:  # the sampled parameters, typed and rounded (not the settings the method pins)
        vals = ", ".join(f"{v:.4g}" for v in t["values"] or [])
        params = " ".join(f"{k}={_short(v)}" for k, v in sorted(t["params"].items()))
        print(f"    #{t['number']:<4} [{vals}]  {params or '(defaults)'}")
    for r in summary.reevaluated:
        print(f"    #{r['trial']:<4} on the full test set: {r['metrics']}")
    print(f"  MLflow parent run {summary.parent_run_id}; open the UI with: "
          f"mlflow ui --backend-store-uri {summary.tracking_uri}")
    if args.output_json:
        print(f"  study summary: {args.output_json}")
    return 0


def _short(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def cmd_report(args) -> int:
    from .analysis.report import build_report

    out = build_report(experiment=args.experiment, out_dir=args.out, tracking_uri=args.tracking_uri,
                       energy_model=args.energy_model)
    print(f"report of {out.runs} runs ({out.experiment}) in {out.out_dir}:")
    for path in out.files:
        print(f"  {path}")
    for note in out.missing:
        print(f"  not drawn: {note}")
    return 0


def _interrupt(signum, frame):
    from .errors import on_signal

    on_signal(signum, frame)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return guarded(lambda: {"run": cmd_run, "ls": cmd_ls, "study": cmd_study, "report": cmd_report}[args.verb](args))


def run_guarded(cfg, prefix: str) -> int:
    """One run without output, as a rank that ``--nproc`` started runs it (``harness.distributed``);
    its errors are printed under ``prefix``."""
    from .runner import run

    def work() -> int:
        run(cfg)
        return 0

    return guarded(work, prefix)


def guarded(work, prefix: str = "harness") -> int:
    """Run ``work()`` as the CLI does: its exit code, the user's errors printed without a traceback."""
    import signal

    from .errors import PHASE, Interrupted

    # SIGINT and SIGTERM stop the work where it is, whatever library is running: Lightning would
    # otherwise turn Ctrl-C into exit 1 and SIGTERM into a silent exit 0
    previous = {s: signal.signal(s, _interrupt) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        return work()
    except Interrupted as exc:
        note = exc.note or "nothing half-written was kept (the ANN cache and the JSON are written whole or not at all)"
        print(printable(f"{prefix}: interrupted by {exc} while {PHASE[0]}; {note}"), file=sys.stderr)
        return exc.exit_code
    except BrokenPipeError:  # output piped into `head`: stop quietly
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except HarnessError as exc:
        print(f"{prefix}: error: {printable(str(exc))}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"{prefix}: interrupted; nothing half-written was kept", file=sys.stderr)
        return 130
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
