"""The GPU path, checked on a CUDA machine (the test suite runs on CPU):

1. ``NeuronPool`` on CUDA: SpikingJelly's multistep IF/LIF (its CUDA/Triton kernels, what
   ``neuron_backend=auto`` picks there) gives the same spikes as the in-place loop — soft reset,
   ``v_init``, membranes exactly at threshold — and how long each takes on one large tensor.
2. Whole runs with ``--device cuda`` on ``digits`` (Lightning on the GPU, the simulator, TTFS's
   evaluator, surrogate training): rate with ``neuron_backend`` auto and inplace give the same
   accuracy and spike counts; each method runs through.

    python tools/gpu_check.py          # prints one line per check; exit 1 if one fails
"""

from __future__ import annotations

import statistics
import sys
import time

import torch

sys.path.insert(0, ".")

from harness.simulate import NeuronPool


def same_spikes() -> list[str]:
    lines, ok = [], True
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.rand(64, 32, 1000, device="cuda", generator=g) * 0.6
    x[:, 0, :8] = 0.25  # quarters: the membrane reaches exactly 1.0 at the 4th step
    for tau in (None, 4.0):
        for v_init in (0.0, 0.5):
            a = NeuronPool(tau, "inplace", v_init)(x)
            pool = NeuronPool(tau, "auto", v_init)
            b = pool(x)
            c = NeuronPool(tau, "auto", v_init)(x[0], steps=64)
            d = NeuronPool(tau, "inplace", v_init)(x[0], steps=64)
            same = torch.equal(a, b) and torch.equal(c, d) and pool._sj is not None
            ok &= same
            lines.append(f"{'IF' if tau is None else 'LIF'} v_init={v_init}: auto used SpikingJelly "
                         f"{pool._sj is not None}, spikes identical {same} ({int(a.sum())} spikes)")
    if not torch.equal(NeuronPool(None, "inplace")(x)[3, 0, :8], torch.ones(8, device="cuda")):
        ok = False
        lines.append("exactly at threshold: no spike at step 4")
    return lines if ok else [*lines, "FAIL"]


def timing() -> str:
    x = torch.rand(256, 500, 4096, device="cuda") * 0.3
    out = {}
    for backend in ("inplace", "spikingjelly", "inplace", "spikingjelly"):  # interleaved
        times = []
        for _ in range(5):
            pool = NeuronPool(None, backend)
            torch.cuda.synchronize()
            t = time.perf_counter()
            pool(x)
            torch.cuda.synchronize()
            times.append(time.perf_counter() - t)
        out.setdefault(backend, []).extend(times)
    med = {k: statistics.median(v) for k, v in out.items()}
    return (f"IF over [256, 500, 4096] on {torch.cuda.get_device_name()}: in-place loop {med['inplace'] * 1e3:.1f} ms, "
            f"SpikingJelly {med['spikingjelly'] * 1e3:.1f} ms (ratio {med['inplace'] / med['spikingjelly']:.1f}x)")


def runs() -> list[str]:
    from harness.config import RunConfig
    from harness.runner import run

    base = dict(dataset="digits", model="dnn5", epochs=5, device="cuda", track=False, progress=False)
    lines, ok = [], True
    res = {}
    for backend in ("auto", "inplace"):
        t = time.perf_counter()
        r = run(RunConfig.build(method="rate", sets=("timesteps=64", f"neuron_backend={backend}"), **base))
        res[backend] = (r.metrics["test/accuracy"], r.metrics["spikes_per_neuron"], time.perf_counter() - t)
    same = res["auto"][:2] == res["inplace"][:2]
    ok &= same
    lines.append(f"rate dnn5 T=64 on cuda: auto {res['auto'][0]:.4f} acc, {res['auto'][1]:.4f} spikes/neuron "
                 f"({res['auto'][2]:.1f} s); inplace {res['inplace'][0]:.4f}, {res['inplace'][1]:.4f} "
                 f"({res['inplace'][2]:.1f} s); identical {same}")
    for method, model, sets in (("ttfs", "dnn5", ("t_max_sweep=", "fig2=false")),
                                ("surrogate", "dnn5", ("epochs=2", "timesteps=4")),
                                ("layer-scaling", "cnn7", ("timesteps=32",))):
        try:
            r = run(RunConfig.build(method=method, sets=sets, **{**base, "model": model}))
            lines.append(f"{method} {model} on cuda: test accuracy {r.metrics['test/accuracy']:.4f}, "
                         f"device {r.provenance['device']}")
        except Exception as exc:  # noqa: BLE001 - reported, and the check fails
            ok = False
            lines.append(f"{method} {model} on cuda FAILED: {type(exc).__name__}: {exc}")
    return lines if ok else [*lines, "FAIL"]


def main() -> int:
    assert torch.cuda.is_available(), "no CUDA device"
    lines = [*same_spikes(), timing(), *runs()]
    print("\n".join(lines))
    return 1 if any(line == "FAIL" for line in lines) else 0


if __name__ == "__main__":
    sys.exit(main())
