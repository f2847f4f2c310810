"""The built-in models: every one builds for the data sets' shapes, traces, folds its BatchNorm,
and the field's usual shapes (vgg-small, resnet-small) run through the conversions."""

import pytest
import torch
from harness.errors import ConfigError
from harness.graph import Kind, trace
from harness.models import MODELS, build_model


@pytest.mark.parametrize("name", MODELS.names())
@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28), (3, 32, 32)])
def test_models_build_trace_and_fold(name, shape):
    model = build_model(name, shape, 10).eval()
    g = trace(model, shape)
    assert g.output.shape == (10,)
    folded = g.folded()
    assert not folded.of(Kind.NORM)
    x = torch.rand(3, *shape)
    with torch.no_grad():
        assert torch.allclose(folded.gm(x), model(x), atol=1e-5)


def test_resnet_small_has_projection_shortcuts_and_residual_adds():
    g = trace(build_model("resnet-small", (1, 28, 28), 10), (1, 28, 28))
    assert len(g.of(Kind.ADD)) == 3
    assert {"layer2.0.shortcut.0", "layer3.0.shortcut.0"} <= set(g.ops)
    assert g["layer3.0.conv2"].shape == (64, 7, 7)
    assert len(g.of(Kind.NORM)) == 9


@pytest.mark.slow
def test_rate_on_resnet_and_ttfs_on_vgg(quick):
    from harness.runner import run

    r = run(quick(method="rate", model="resnet-small", sets=("timesteps=32",)))
    assert r.metrics["layer/layer2.0.conv1/synops"] > 0 and r.metrics["test/accuracy"] > 0.3
    t = run(quick(method="ttfs", model="vgg-small", sets=("t_max=16", "t_max_sweep=", "fig2=false")))
    assert t.metrics["spikes_per_neuron"] <= 1 and t.metrics["test/accuracy"] > 0.3


def test_ttfs_refuses_resnet_before_training(quick, monkeypatch, tmp_path):
    import harness.ann_cache as cache
    from harness.runner import run

    monkeypatch.setattr(cache, "train_ann", lambda ctx: pytest.fail("trained before checking"))
    with pytest.raises(ConfigError, match=r"node `layer1.0.add` \(operator.add\) cannot be converted by ttfs"):
        run(quick(method="ttfs", model="resnet-small"))
