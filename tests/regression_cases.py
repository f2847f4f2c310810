"""The cases of ``tests/test_regression.py`` and the recorder that writes their data.

Stored networks (``data/regression_nets.pt``): the nine built-in models' ANNs trained on ``digits``
(seed 0), a Whetstone-sharpened stpu-dnn and stpu-cnn, surrogate-trained dnn5 and cnn7, and cnn7
pruned to 80 %. Their weights are rounded to float16 when stored (half the size; they are loaded
back as float32, and the pins are recorded on exactly those values). Training made them once;
everything the regression pins is computed *from* them and involves no training: conversion,
calibration, simulation, decoding, meters, energy.

    python tests/regression_cases.py nets     # retrain and store the networks (then record)
    python tests/regression_cases.py record   # recompute the pinned metrics from the stored networks
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import torch

DATA = Path(__file__).parent / "data"
NETS = DATA / "regression_nets.pt"
PINS = DATA / "regression_digits.json"

MODELS = ("dnn5", "cnn7", "ttfs-cnn", "stpu-dnn", "stpu-cnn", "cnn-restricted", "cnn-unrestricted", "vgg-small",
          "resnet-small")
NO_TTFS = ("cnn7", "resnet-small")  # average pooling, residual adds: ttfs refuses them
# the methods evaluated on a stored ANN (today's defaults but T and the sweep, kept short)
ON_ANN = {
    "ann": (),
    "rate": ("timesteps=16",),
    "layer-scaling": ("timesteps=16", "eval_samples=120"),
    "ttfs": ("t_max=16", "t_max_sweep=8,16", "fig2=false"),
}
# networks made by a method that trains (stored) and how to rebuild them for evaluation
TRAINED = {
    # stored 10-hot (trained before the default became 4): the key is part of the stored network
    "sharpen/stpu-dnn": ("sharpen", "stpu-dnn", ("epochs=8", "start_epoch=2", "duration=4", "lr=3e-3", "n_hot=10")),
    "sharpen/stpu-cnn": ("sharpen", "stpu-cnn", ("epochs=8", "start_epoch=2", "duration=4", "lr=3e-3", "n_hot=10")),
    "surrogate/dnn5": ("surrogate", "dnn5", ("epochs=3", "timesteps=4", "lr=3e-3")),
    "surrogate/cnn7": ("surrogate", "cnn7", ("epochs=3", "timesteps=2", "lr=3e-3", "encoding=poisson")),
    "prune/cnn7": ("prune", "cnn7", ("epochs=4", "start_epoch=1", "ramp_epochs=2", "final_sparsity=0.8")),
}
TRAIN = dict(dataset="digits", epochs=15, lr=3e-3, batch_size=32, progress=False)


def cases() -> list[str]:
    out = [f"{model}/{method}" for model in MODELS for method in ON_ANN if not (method == "ttfs" and model in NO_TTFS)]
    out += ["sharpen/stpu-dnn", "sharpen/stpu-dnn/tie_break=first", "sharpen/stpu-cnn", "surrogate/dnn5",
            "surrogate/cnn7", "prune/cnn7/ann", "prune/cnn7/rate"]
    return out


# ---------------------------------------------------------------------------------------------
# the stored networks


def _half(state: dict) -> dict:
    return {k: v.half() if v.is_floating_point() else v for k, v in state.items()}


def load_nets() -> dict[str, dict[str, torch.Tensor]]:
    blob = torch.load(NETS, map_location="cpu", weights_only=True)
    return {name: {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
            for name, state in blob.items()}


def make_nets() -> None:
    """Train every stored network (seed 0, on digits) and write ``data/regression_nets.pt``."""
    import os

    from harness.runner import run

    nets = {}
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["HARNESS_CACHE_DIR"] = tmp
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp}/mlruns.db"
        for model in MODELS:
            res = run(_config(method="ann", model=model, track=False))
            nets[f"ann/{model}"] = torch.load(res.provenance["ann_cache_file"], weights_only=True)["state_dict"]
        for name, (method, model, sets) in TRAINED.items():
            res = run(_config(method=method, model=model, track=True, sets=sets))
            from mlflow.tracking import MlflowClient

            path = MlflowClient(os.environ["MLFLOW_TRACKING_URI"]).download_artifacts(
                res.tracking["run_id"], "network.pt", tmp)
            nets[name] = torch.load(path, weights_only=False)["state_dict"]
    torch.save({k: _half(v) for k, v in nets.items()}, NETS)


def _config(**kw):
    from harness.config import RunConfig

    return RunConfig.build(**{**TRAIN, **kw})


# ---------------------------------------------------------------------------------------------
# the pinned metrics


def compute(case: str, nets: dict, tmp: Path) -> dict[str, float]:
    """The metrics of one case, from the stored networks alone."""
    from harness.runner import run

    parts = case.split("/")
    if parts[0] in ("sharpen", "surrogate"):
        return _evaluate_trained(case, nets)
    if parts[0] == "prune":
        weights, model, method, sets = "prune/cnn7", "cnn7", parts[2], ON_ANN[parts[2]]
    else:
        model, method = parts
        weights, sets = f"ann/{model}", ON_ANN[method]
    path = tmp / f"{weights.replace('/', '_')}.pt"
    if not path.exists():
        torch.save(nets[weights], path)
    res = run(_config(method=method, model=model, track=False, weights=str(path), sets=sets))
    return {k: float(v) for k, v in res.metrics.items()}


def _evaluate_trained(case: str, nets: dict) -> dict[str, float]:
    """A sharpened or surrogate-trained network rebuilt from its stored tensors and evaluated by
    the harness's loop (its decoding, meters and invariants) on the digits test split."""
    from harness.datasets import load_dataset
    from harness.energy import energy_metrics
    from harness.evaluation import evaluate
    from harness.methods import METHODS
    from harness.models import build_model

    method, model, *rest = case.split("/")
    _, _, sets = TRAINED[f"{method}/{model}"]
    params = METHODS.get(method).Params.from_strings(dict(s.split("=") for s in (*sets, *rest)))
    ds = load_dataset("digits")
    arch = build_model(model, ds.input_shape, ds.num_classes)
    torch.manual_seed(0)  # the Poisson encoder draws
    if method == "sharpen":
        from harness.methods.sharpen import build_sharpenable, set_sharpness
        from harness.methods.sharpen.snn import SharpenedSNN

        net = build_sharpenable(arch, ds.input_shape, ds.num_classes, params)
        missing, unexpected = net.gm.load_state_dict(nets[f"{method}/{model}"], strict=False)
        assert not unexpected and all(k.endswith("sharpness") for k in missing), (missing, unexpected)
        set_sharpness(net.activations, [1.0] * len(net.activations))
        net.gm.eval()
        ev = SharpenedSNN(net, params.tie_break)
    else:
        from harness.methods.surrogate import SpikingNet

        snet = SpikingNet(arch, ds.input_shape, params)
        snet.net.load_state_dict(nets[f"{method}/{model}"])
        ev = snet.eval().evaluable()
    evaluation = evaluate(ev, ds.loader("test", 500))
    metrics = {**evaluation.metrics, **energy_metrics(evaluation.metrics, None, spiking=True,
                                                      parts=evaluation.breakdowns)}
    if method == "sharpen":
        counted, n = evaluation.meters.counters, evaluation.meters.samples
        metrics["sharpen/ties"] = counted["sharpen/ties"] / n
        metrics["sharpen/snn_agreement"] = counted["sharpen/agree"] / n
        metrics["sharpen/test/accuracy_readout_potential"] = counted["correct/readout_potential"] / n
    return {k: float(v) for k, v in metrics.items()}


def record() -> None:
    nets = load_nets()
    with tempfile.TemporaryDirectory() as tmp:
        import os

        os.environ["HARNESS_CACHE_DIR"] = tmp
        pins = {case: compute(case, nets, Path(tmp)) for case in cases()}
    PINS.write_text(json.dumps(pins, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent.parent))
    what = sys.argv[1] if len(sys.argv) > 1 else "record"
    if what == "nets":
        make_nets()
    record()
