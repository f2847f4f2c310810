"""The ``harness`` command line: ``run`` and ``ls`` (more verbs arrive with their issues).

Start-up stays light: argparse plus the registries' description tables. torch, Lightning and
MLflow are imported only by the verbs that need them.
"""

from __future__ import annotations

import argparse
import sys

from . import __version__
from .errors import HarnessError

LS_KINDS = ("methods", "datasets", "models", "energy", "params")


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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="harness",
        description="Accuracy / sparsity / energy benchmark of spiking neural networks.",
        epilog="Examples:\n  harness run --method ttfs\n  harness run --method ann --dataset digits "
               "--output-json r.json\n  harness ls methods",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"snn-harness {__version__}")
    sub = p.add_subparsers(dest="verb", metavar="{run,ls}")
    sub.required = True

    r = sub.add_parser("run", help="run one method on one data set and model",
                       description="Train (or load the cached) ANN, apply a method, meter it, log to MLflow.")
    r.add_argument("--method", "-m", help="method key; compose transforms with '+', e.g. prune+ttfs (default: ann)")
    r.add_argument("--dataset", "-d", help="data set key (default: mnist-5k)")
    r.add_argument("--model", help="model key (default: the method's choice)")
    r.add_argument("--seed", type=int, help="random seed (default: 0)")
    r.add_argument("--epochs", type=int, help="ANN training epochs (default: 15)")
    r.add_argument("--batch-size", type=int, dest="batch_size", help="training batch size (default: 64)")
    r.add_argument("--lr", type=float, help="learning rate (default: 1e-3)")
    r.add_argument("--act-l1", type=float, dest="act_l1", help="activation-L1 penalty for the ANN (default: 0)")
    r.add_argument("--device", choices=("auto", "cpu", "cuda"), help="default: auto")
    r.add_argument("--set", "-s", action="append", dest="sets", metavar="KEY=VALUE",
                   help="method parameter (repeatable); 'harness ls params --method M' lists them")
    r.add_argument("--output-json", "-o", dest="output_json", metavar="FILE", help="write the result record")
    r.add_argument("--config", metavar="FILE.yaml", help="YAML file of run settings (flags override it)")
    r.add_argument("--data-dir", dest="data_dir", help="where data files are found / downloaded")
    r.add_argument("--cache-dir", dest="cache_dir", help="ANN cache directory")
    r.add_argument("--experiment", help="MLflow experiment (default from mlflow.yaml)")
    r.add_argument("--no-track", dest="track", action="store_const", const=False, help="do not log to MLflow")
    r.add_argument("--no-progress", dest="progress", action="store_const", const=False, help="hide progress bars")

    ls = sub.add_parser("ls", help="list methods, datasets, models, energy models or a method's params")
    ls.add_argument("kind", choices=LS_KINDS)
    ls.add_argument("--method", help="with 'params': the method whose parameters to list")
    return p


def cmd_ls(args) -> int:
    if args.kind == "params":
        if not args.method:
            raise HarnessError("harness ls params needs --method M")
        from .methods import resolve

        for cls in resolve(args.method):
            print(f"{cls.name} parameters (--set key=value):")
            rows = cls.Params.describe()
            if not rows:
                print("  (none)")
            for row in rows:
                rng = f"  range {row['range']}" if row["range"] else ""
                print(f"  {row['key']:<22} {row['type']:<18} default {row['default']}{rng}\n      {row['help']}")
        return 0
    reg = _registry(args.kind)
    width = max((len(n) for n in reg), default=0)
    for name, desc in reg.items():
        print(f"{name:<{width}}  {desc}")
    return 0


def cmd_run(args) -> int:
    from .config import RunConfig
    from .runner import run

    fields = ("method", "dataset", "model", "seed", "epochs", "batch_size", "lr", "act_l1", "device",
              "output_json", "data_dir", "cache_dir", "experiment", "track", "progress")
    overrides = {f: getattr(args, f) for f in fields}
    if args.sets:
        overrides["sets"] = tuple(args.sets)
    cfg = RunConfig.build(args.config, **overrides)
    result = run(cfg)
    m = result.metrics
    print(f"{result.method} on {result.dataset['name']} / {result.model} (seed {result.seed})")
    print(f"  test/accuracy        {m['test/accuracy']:.4f}   (ANN {m['ann/test/accuracy']:.4f}, "
          f"drop {m['test/accuracy_drop']:+.4f})")
    print(f"  spikes_per_neuron    {m['spikes_per_neuron']:.4f}   activation_sparsity {m['activation_sparsity']:.4f}")
    print(f"  synops               {m['synops']:.4g}   macs {m['macs']:.4g}   (ANN macs {m['ann/macs']:.4g})")
    print(f"  energy cmos45-fp32   {m['energy/cmos45-fp32/joules']:.4g} J   "
          f"(ANN {m['ann/energy/cmos45-fp32/joules']:.4g} J, ratio {m['energy/cmos45-fp32/ratio']:.3f})")
    if result.tracking:
        print(f"  MLflow run {result.tracking['run_id']} in {result.tracking['tracking_uri']}")
    if cfg.output_json:
        print(f"  result record: {cfg.output_json}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return {"run": cmd_run, "ls": cmd_ls}[args.verb](args)
    except HarnessError as exc:
        print(f"harness: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("harness: interrupted; nothing half-written was kept", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
