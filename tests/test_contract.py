"""Every registered method passes the same contract (parametrised over the registry)."""

import math

import pytest

from harness.methods import METHODS
from harness.runner import run

REQUIRED = ("test/accuracy", "ann/test/accuracy", "test/accuracy_drop", "timesteps", "spikes_per_neuron",
            "activation_sparsity", "connection_sparsity", "synops", "macs", "ann/macs", "neuron_updates",
            "energy/cmos45-fp32/joules", "ann/energy/cmos45-fp32/joules", "energy/cmos45-fp32/ratio")


@pytest.mark.parametrize("name", METHODS.names())
def test_method_contract(name, quick):
    cls = METHODS.get(name)
    assert cls.name == name
    assert cls.__module__ == f"harness.methods.{name.replace('-', '_')}"  # file name = key
    params = cls.Params()
    assert set(params.as_dict()) == set(cls.Params.keys())
    smoke = getattr(cls, "smoke_sets", {})
    res = run(quick(method=name, sets=tuple(f"{k}={v}" for k, v in smoke.items())))
    m = res.metrics
    for key in REQUIRED:
        assert key in m, f"{name}: missing {key}"
        assert math.isfinite(m[key]), f"{name}: {key} = {m[key]}"
    assert 0.0 <= m["test/accuracy"] <= 1.0
    assert m["test/accuracy"] > 0.15, "better than chance on digits after training"
    assert 0.0 <= m["activation_sparsity"] <= 1.0
    assert m["test/accuracy_drop"] == pytest.approx(m["ann/test/accuracy"] - m["test/accuracy"])
    assert res.layers and all("layer" in row for row in res.layers)
    if cls.spiking:
        assert m["synops"] > 0 and m["spikes_per_neuron"] > 0
