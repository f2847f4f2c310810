"""sharpen (Whetstone): activations, schedules, the N-hot code, encodings and the binary SNN."""

import math

import pytest
import torch
from harness.errors import ConfigError
from harness.methods.sharpen import (
    InputEncoding,
    NHotDecode,
    SharpenableActivation,
    Sharpener,
    SharpenParams,
    build_sharpenable,
    layer_sharpness,
    set_sharpness,
    sharpening_lr,
)
from harness.methods.sharpen.callback import SharpeningCallback
from harness.methods.sharpen.snn import to_spiking
from harness.runner import run
from torch import nn


@pytest.mark.parametrize("s", [0.0, 0.3, 0.9, 0.999])
def test_brelu_is_whetstones_formula(s):
    act = SharpenableActivation("brelu")
    act.sharpness.fill_(s)
    x = torch.linspace(-1, 2, 301)
    s = float(act.sharpness)  # as stored (float32)
    expected = torch.clamp((x - 0.5) / (1 - s + 0.001) + 0.5, 0, 1)
    assert torch.allclose(act(x), expected)
    assert float(act(torch.tensor(0.5))) == pytest.approx(0.5)  # always through (0.5, 0.5)


def test_sigmoid_sharpens_to_a_step_at_zero():
    act = SharpenableActivation("sigmoid")
    x = torch.tensor([-0.2, -0.01, 0.0, 0.01, 0.2])
    act.sharpness.fill_(0.0)
    assert torch.allclose(act(x), torch.sigmoid(x * 4 * math.log(2 + math.sqrt(3)) / 1.001))
    act.sharpness.fill_(1.0)
    assert act(x).tolist() == [0.0, 0.0, 1.0, 1.0, 1.0]


def test_fully_sharpened_brelu_is_a_step():
    act = SharpenableActivation("brelu")
    act.sharpness.fill_(1.0)
    assert act(torch.tensor([0.49, 0.5, 0.51, 3.0, -3.0])).tolist() == [0.0, 1.0, 1.0, 1.0, 0.0]


def test_layer_sharpness_bottom_up_and_uniform():
    assert layer_sharpness(0.5, 3, True) == pytest.approx([1.0, 0.5, 0.0])
    assert layer_sharpness(0.0, 3, True) == [0.0, 0.0, 0.0]
    assert layer_sharpness(1.0, 3, True) == [1.0, 1.0, 1.0]
    assert layer_sharpness(0.25, 2, True) == pytest.approx([0.5, 0.0])
    assert layer_sharpness(0.4, 3, False) == [0.4, 0.4, 0.4]


def _net(activation="brelu", n_hot=4, encoding="binary"):
    torch.manual_seed(0)
    arch = nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 3))
    return build_sharpenable(arch, (1, 4, 4), 3, SharpenParams(activation=activation, n_hot=n_hot, encoding=encoding))


@pytest.mark.parametrize("schedule,sets,done_after", [
    ("scheduled", dict(start_epoch=2, duration=3), 5),
    ("fixed", dict(start_epoch=1, rate=0.5), 3),
])
def test_schedules_reach_full_sharpness_on_time(schedule, sets, done_after):
    p = SharpenParams(schedule=schedule, epochs=10, **sets)
    net = _net()
    sh = Sharpener(net.activations, p)
    for epoch in range(10):
        for b in range(4):
            sh.on_batch(epoch, b, 4)
            sh.apply()
        sh.on_epoch_end(epoch, 1.0)
        if sh.done:
            break
    assert epoch + 1 == done_after
    hist = sh.history["spike_out"]
    assert hist[-1] == 1.0 and all(v == 0.0 for v in hist[:-2])  # the readout sharpens last (bottom-up)
    first = sh.history[sh.names[0]]
    assert all(a <= b for a, b in zip(first, first[1:]))
    assert all(float(m.sharpness) == 1.0 for m in net.gm.modules() if isinstance(m, SharpenableActivation))
    assert sh.names == ["2", "4", "spike_out"]  # forward order: bottom-up sharpens from the input


def test_adaptive_waits_for_a_plateau_and_pauses_when_loss_jumps():
    p = SharpenParams(schedule="adaptive", start_epoch=2, patience=1, sig_change=0.15, rate=0.5, epochs=50)
    sh = Sharpener(_net().activations, p)
    losses = [2.0, 1.0, 0.5, 0.49, 0.48, 0.48]  # improves, then plateaus
    for epoch, loss in enumerate(losses):
        for b in range(2):
            sh.on_batch(epoch, b, 2)
        sh.on_epoch_end(epoch, loss)
    # warm-up and improvement: nothing; plateau for more than `patience` epochs after epoch 4: sharpen
    assert sh.history[sh.names[0]] == pytest.approx([0, 0, 0, 0, 0, 0.5]) and sh.sharpening
    before = list(sh.values)
    for b in range(2):
        sh.on_batch(len(losses), b, 2)
    assert sh.values[0] > before[0]
    sh.on_epoch_end(len(losses), 5.0)  # loss jumps: sharpening pauses
    assert not sh.sharpening
    frozen = list(sh.values)
    sh.on_batch(len(losses) + 1, 0, 2)
    assert sh.values == frozen


def test_n_hot_decode_picks_the_class_whose_outputs_fire():
    dec = NHotDecode(3, 4)
    y = torch.zeros(2, 12)
    y[0, 4:8] = 1  # class 1
    y[1, 8:11] = 1  # 3 of class 2's 4 outputs, plus one of class 0's
    y[1, 0] = 1
    assert dec(y).argmax(-1).tolist() == [1, 2]


def test_ties_go_to_the_highest_summed_potential_among_the_tied_classes_only():
    dec = NHotDecode(3, 2)  # class c owns outputs 2c, 2c + 1
    y = torch.tensor([[1.0, 0, 1, 0, 0, 0],   # classes 0 and 1 tie (one output each)
                      [0.0, 0, 1, 1, 0, 0],   # class 1 wins outright
                      [0.0, 0, 0, 0, 0, 0]])  # nothing fires: all three tie
    pot = torch.tensor([[0.6, 0.1, 0.9, 0.3, 0.4, 0.4],  # tied: class 0 sums 0.7, class 1 sums 1.2
                        [0.0, 0.0, 0.6, 0.7, 5.0, 5.0],  # class 2 has the most potential but did not win
                        [0.2, -0.1, 0.1, 0.0, 0.05, 0.0]])  # sums 0.1, 0.1, 0.05: exact tie -> first
    votes = dec(y)
    pred, ties = dec.decide(votes, pot, "potential")
    assert pred.tolist() == [1, 1, 0] and ties.tolist() == [True, False, True]
    first, ties_first = dec.decide(votes, pot, "first")
    assert first.tolist() == [0, 1, 0] and ties_first.tolist() == ties.tolist()


def test_sharpening_learning_rate_scales_down_with_batches_per_epoch():
    assert sharpening_lr(1e-3, 10) == 1e-3 and sharpening_lr(1e-3, 64) == 1e-3  # small data: unchanged
    assert sharpening_lr(1e-3, 128) == pytest.approx(5e-4)
    assert sharpening_lr(1e-3, 844) == pytest.approx(1e-3 * 64 / 844)


def test_sharpening_starts_once_with_every_layer_still_bounded():
    """Scheduled from epoch 2 over 3 epochs of 4 batches: the first batch of epoch 2 is the start
    (sharpness 1/12 of the network, bottom-up: the first layer's 1/4), reported before it applies."""
    p = SharpenParams(schedule="scheduled", start_epoch=2, duration=3, epochs=10)
    net = _net()
    sh = Sharpener(net.activations, p)
    seen = []
    for epoch in range(5):
        for b in range(4):
            if sh.on_batch(epoch, b, 4):
                seen.append((epoch, b, sh.values[:], [float(a.sharpness) for _, a in net.activations]))
            sh.apply()
    assert len(seen) == 1
    epoch, batch, values, applied = seen[0]
    assert (epoch, batch) == (2, 0)
    assert values == pytest.approx([0.25, 0.0, 0.0]) and applied == [0.0, 0.0, 0.0]


def test_the_callback_keeps_the_network_and_decays_the_rate_with_the_networks_sharpness():
    from types import SimpleNamespace

    p = SharpenParams(schedule="scheduled", start_epoch=1, duration=2, epochs=5)
    net = _net()
    sh = Sharpener(net.activations, p)
    opt = torch.optim.Adam(net.gm.parameters(), lr=1e-3)
    cb = SharpeningCallback(sh, net.gm, 0.0)  # 0: the default rule
    trainer = SimpleNamespace(optimizers=[opt], current_epoch=0, num_training_batches=128, should_stop=False)
    for b in range(128):
        cb.on_train_batch_end(trainer, None, None, None, b)
    assert opt.param_groups[0]["lr"] == 1e-3 and cb.before is None  # epoch 0: not sharpening yet
    with torch.no_grad():
        net.gm.get_submodule("1").weight.add_(1.0)  # training moved the weights
    trainer.current_epoch = 1
    cb.on_train_batch_end(trainer, None, None, None, 0)
    start = 1e-3 * 64 / 128  # 128 batches per epoch: half the rate
    assert cb.lr_used == pytest.approx(start)
    # network sharpness after one of 256 sharpening batches: 1/256; cos decay to 1 % at sharpness 1
    s1 = 1 / 256
    assert opt.param_groups[0]["lr"] == pytest.approx(start * (0.01 + 0.99 * (1 + math.cos(math.pi * s1)) / 2))
    assert cb.before is not None and all(float(v) == 0.0 for k, v in cb.before.items() if k.endswith("sharpness"))
    assert torch.equal(cb.before["1.weight"], net.gm.get_submodule("1").weight)
    kept = cb.before
    for b in range(1, 128):
        cb.on_train_batch_end(trainer, None, None, None, b)
    assert opt.param_groups[0]["lr"] == pytest.approx(start * (0.01 + 0.99 * 0.5))  # halfway: sharpness 1/2
    trainer.current_epoch = 2
    for b in range(128):
        cb.on_train_batch_end(trainer, None, None, None, b)
    assert sh.done and opt.param_groups[0]["lr"] == pytest.approx(start * 0.01)
    assert cb.before is kept and cb.lr_used == pytest.approx(start)  # taken once
    explicit = Sharpener(_net().activations, p)
    opt2 = torch.optim.Adam(net.gm.parameters(), lr=1e-3)
    cb2 = SharpeningCallback(explicit, net.gm, 3e-5)
    cb2.on_train_batch_end(SimpleNamespace(optimizers=[opt2], current_epoch=1, num_training_batches=4,
                                           should_stop=False), None, None, None, 0)
    assert cb2.lr_used == 3e-5 and opt2.param_groups[0]["lr"] < 3e-5
    constant = Sharpener(_net().activations, p)  # lr_floor = 1: Whetstone's constant rate
    opt3 = torch.optim.Adam(net.gm.parameters(), lr=1e-3)
    cb3 = SharpeningCallback(constant, net.gm, 3e-5, floor=1.0)
    for b in range(4):
        cb3.on_train_batch_end(SimpleNamespace(optimizers=[opt3], current_epoch=2, num_training_batches=4,
                                               should_stop=False), None, None, None, b)
    assert constant.values[-1] > 0 and opt3.param_groups[0]["lr"] == pytest.approx(3e-5)


def test_contours_outline_a_square():
    x = torch.zeros(1, 1, 8, 8)
    x[..., 2:6, 2:6] = 1.0
    edges = InputEncoding("contours", contour_threshold=1.0)(x)[0, 0]
    assert edges[3:5, 3:5].sum() == 0  # inside: flat
    assert edges[2, 2:6].sum() == 4 and edges[5, 2:6].sum() == 4  # the border
    assert set(edges.unique().tolist()) <= {0.0, 1.0}
    assert InputEncoding("binary")(torch.tensor([0.2, 0.5, 0.9])).tolist() == [0.0, 1.0, 1.0]


@pytest.mark.parametrize("activation", ["brelu", "sigmoid"])
def test_one_step_if_network_equals_the_sharpened_network(activation):
    net = _net(activation)
    model = net.gm.eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Linear):
                m.weight.normal_(0, 1)
    set_sharpness(net.activations, [1.0] * 3)
    snn = to_spiking(net).eval()
    assert sum(type(m).__name__ == "IFNode" for m in snn.modules()) == 3
    x = torch.rand(64, 1, 4, 4)
    with torch.no_grad():
        assert torch.equal(snn(x), model(x))


@pytest.mark.slow
def test_sharpen_run_on_digits(quick):
    res = run(quick(method="sharpen", model="stpu-dnn", sets=("epochs=6", "start_epoch=2", "duration=3")))
    m, steps = res.metrics, res.step_metrics
    assert m["sharpen/sharpness_reached"] == 1.0 and m["sharpen/epochs_trained"] == 5
    assert m["sharpen/snn_agreement"] == 1.0
    assert m["timesteps"] == 1 and m["macs"] == 0 and m["synops"] > 0  # binary input: no MACs
    assert m["test/accuracy"] > 0.5
    assert steps["sharpen/sharpness/relu_fc1"][-1] == 1.0 and len(steps["sharpen/train/loss"]) == 5
    layers = {r["layer"]: r for r in res.layers}
    assert layers["spike_out"]["neurons"] == 40  # 10 classes × the default n_hot 4
    assert 0 <= m["sharpen/ties"] <= 1 and 0 < m["sharpen/brelu/test/accuracy"] <= 1
    # ties are the only samples the two rules can decide differently
    assert abs(m["test/accuracy"] - m["sharpen/test/accuracy_lowest_index"]) <= m["sharpen/ties"]
    assert len(steps["sharpen/val/accuracy_sharpened"]) == 5
    # the last epoch ends fully sharpened: its validation accuracy is the sharpened network's
    assert steps["sharpen/val/accuracy_sharpened"][-1] == pytest.approx(steps["sharpen/val/accuracy"][-1])
    cur = run(quick(method="sharpen", model="stpu-dnn",
                    sets=("epochs=6", "start_epoch=2", "duration=3", "encoding=current")))
    assert cur.metrics["macs"] == cur.metrics["layer/fc1/macs"] > 0  # analog input: first layer only
    assert cur.metrics["layer/fc1/synops"] == 0 and cur.metrics["layer/fc2/synops"] > 0


@pytest.mark.slow
def test_adaptive_run_stops_when_the_last_layer_is_sharp_mid_epoch(quick):
    # rate 0.7 per epoch completes a layer part-way through an epoch; once every layer is a step
    # function no gradient is left, so training must stop there rather than step on.
    res = run(quick(method="sharpen", model="stpu-dnn", sets=(
        "schedule=adaptive", "start_epoch=1", "patience=0", "sig_change=10", "rate=0.7", "cz_rate=0.7",
        "epochs=30")))
    m = res.metrics
    assert m["sharpen/sharpness_reached"] == 1.0 and m["sharpen/epochs_trained"] < 30
    assert m["sharpen/snn_agreement"] == 1.0


@pytest.mark.parametrize("sets,needle", [
    (("start_epoch=10", "duration=10", "epochs=15"), "start_epoch \\+ duration"),
    (("schedule=fixed", "rate=0.1", "epochs=8"), "ceil\\(1/rate\\)"),
    (("rate=0",), "rate"),
    (("n_hot=0",), "n_hot"),
])
def test_bad_schedules_are_refused(quick, sets, needle):
    with pytest.raises(ConfigError, match=needle):
        run(quick(method="sharpen", sets=sets))


def test_average_pooling_is_refused_before_training(quick, monkeypatch):
    import harness.ann_cache as cache

    monkeypatch.setattr(cache, "train_ann", lambda ctx: pytest.fail("trained before checking"))
    with pytest.raises(ConfigError, match="AvgPool2d.*max-pooling models"):
        run(quick(method="sharpen", model="cnn7"))


def test_the_schedule_follows_epochs_set_alone_and_an_explicit_one_is_kept_or_refused():
    """Defaults: 30 epochs, scheduled from epoch 5 over 10. ``epochs=6`` alone scales them to start
    1, duration 2; ``fixed`` raises its rate to end in time; a schedule the user set is kept."""
    p = SharpenParams.from_strings({"epochs": "6"})
    assert (p.start_epoch, p.duration) == (1, 2)
    p = SharpenParams.from_strings({"epochs": "60"})
    assert (p.start_epoch, p.duration) == (10, 20)
    fixed = SharpenParams.from_strings({"epochs": "3", "schedule": "fixed"})
    assert (fixed.start_epoch, fixed.rate) == (0, pytest.approx(1 / 3))  # 0.25/epoch would need 4 epochs
    assert SharpenParams.from_strings({"epochs": "12", "schedule": "fixed"}).rate == 0.25  # fits: kept
    adaptive = SharpenParams.from_strings({"epochs": "6", "schedule": "adaptive"})
    assert adaptive.start_epoch == 1
    kept = SharpenParams.from_strings({"epochs": "20", "duration": "4"})
    assert (kept.start_epoch, kept.duration) == (5, 4)
    with pytest.raises(ConfigError, match="the schedule ends at epoch 15 but training has 6 epochs"):
        SharpenParams.from_strings({"epochs": "6", "start_epoch": "5"})
    with pytest.raises(ConfigError, match="ceil\\(1/rate\\)"):
        SharpenParams.from_strings({"epochs": "3", "schedule": "fixed", "rate": "0.25"})


def test_a_run_that_sets_only_epochs_sharpens_within_them(quick):
    res = run(quick(method="sharpen", model="stpu-dnn", eval_limit=40, sets=("epochs=3",)))
    assert res.params["start_epoch"] == 0 and res.params["duration"] == 1
    assert res.metrics["sharpen/sharpness_reached"] == 1.0 and res.metrics["sharpen/epochs_trained"] <= 3


def test_the_n_hot_key_decodes_by_hand():
    """Whetstone's Softmax_Decode: logits = (2y − 1)(2K − 1)ᵀ, class c owning outputs 2c, 2c + 1.
    y = (1, 1, 0, 0, 0, 0): class 0 agrees on all 6 outputs (6), classes 1 and 2 on 2 of 6 (−2).
    Wrong variants: the key not centred (K instead of 2K − 1), outputs given to the wrong class."""
    dec = NHotDecode(3, 2)
    y = torch.tensor([[1.0, 1.0, 0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0, 1.0, 1.0]])
    assert dec(y).tolist() == [[6.0, -2.0, -2.0], [-4.0, 0.0, 4.0]]


def test_bottom_up_sharpness_at_exact_layer_boundaries():
    """At a network sharpness of k/n the first k layers are exactly sharp and the rest untouched
    (not k − 1 sharp and one at 1.0 'in progress'); past 1 every layer is sharp."""
    assert layer_sharpness(2 / 3, 3, True) == [1.0, 1.0, 0.0]
    assert layer_sharpness(1 / 3, 3, True) == [1.0, 0.0, 0.0]
    assert layer_sharpness(0.999, 2, True) == pytest.approx([1.0, 0.998])
    assert layer_sharpness(1.5, 2, True) == [1.0, 1.0] and layer_sharpness(-0.5, 2, True) == [0.0, 0.0]
    assert layer_sharpness(1.5, 2, False) == [1.0, 1.0]


def test_adaptive_counts_a_flat_epoch_after_the_warm_up_as_the_first_without_improvement():
    """Flat losses, warm-up of 2, patience 1: epoch 1 is the first without improvement (1 ≤ 1),
    epoch 2 the second (2 > 1): sharpening starts at the end of epoch 2. Wrong variant: the
    counter starting at 1 (sharpening an epoch early)."""
    p = SharpenParams(schedule="adaptive", start_epoch=2, patience=1, sig_change=0.15, rate=0.5, epochs=50)
    sh = Sharpener(_net().activations, p)
    started = []
    for epoch in range(4):
        for b in range(2):
            sh.on_batch(epoch, b, 2)
        sh.on_epoch_end(epoch, 1.0)
        started.append(sh.sharpening)
    assert started == [False, False, True, True]


def test_the_contour_encoding_takes_the_threshold_it_is_given():
    net = build_sharpenable(nn.Sequential(nn.Flatten(), nn.Linear(16, 3)), (1, 4, 4), 3,
                            SharpenParams(encoding="contours", contour_threshold=2.5, binary_threshold=0.25, n_hot=1))
    (enc,) = [m for m in net.gm.modules() if type(m).__name__ == "InputEncoding"]
    assert (enc.kind, enc.contour_threshold, enc.binary_threshold) == ("contours", 2.5, 0.25)


@pytest.mark.parametrize("schedule", ["fixed", "adaptive"])
def test_a_short_training_starts_sharpening_by_its_last_epoch(schedule):
    """``epochs`` set alone scales the start (default 5 of 30): 2 epochs start at round(5·2/30) = 0,
    8 at round(1.33) = 1, 24 at 4. Wrong variants: the start not scaled, or scaled by another ratio.
    (Its clamp to the last epoch never binds at the default ratio: round(5e/30) ≤ e − 2 for e ≥ 2.)"""
    assert SharpenParams.completed({"epochs": "8", "schedule": schedule})["start_epoch"] == 1
    p = SharpenParams.completed({"epochs": "2", "schedule": schedule})
    assert p["start_epoch"] == 0
    assert SharpenParams.completed({"epochs": "24", "schedule": schedule})["start_epoch"] == 4


def test_the_readout_potential_decision_sums_each_class_s_readout_current_by_hand():
    """Binary input (pixel ≥ 0.5), hidden steps [x ≥ 0.5], then the readout's input current summed
    over the 4 outputs each class owns, argmax. Wrong variants: deciding by the spikes (the vote),
    an output given to the wrong class, the hidden layers left analog."""
    from harness.meters import Meters
    from harness.methods.sharpen.snn import SharpenedSNN

    net = _net()
    set_sharpness(net.activations, [1.0] * len(net.activations))
    net.gm.eval()
    l1, l2, l3 = [m for m in net.gm.modules() if isinstance(m, nn.Linear)]
    with torch.no_grad():  # an untrained readout hardly fires: make its votes differ
        l2.weight.mul_(3.0)
        l3.weight.mul_(6.0)
    ev = SharpenedSNN(net, "potential")
    torch.manual_seed(1)
    x = torch.rand(256, 1, 4, 4)
    with torch.no_grad():
        out = ev.run_batch(x, Meters())
        h = (x.flatten(1) >= 0.5).float()
        h = (l1(h) >= 0.5).float()
        h = (l2(h) >= 0.5).float()
        current = l3(h)
    want = current.reshape(256, 3, 4).sum(-1).argmax(-1)
    assert torch.equal(out.alternatives["readout_potential"], want)
    with torch.no_grad():  # class 0: one output at 5.0 (1 spike); class 1: two at 0.6 (2 spikes, sum 1.2)
        l3.weight.zero_()
        l3.bias.copy_(torch.tensor([5.0, 0, 0, 0, 0.6, 0.6, 0, 0, 0, 0, 0, 0]))
        out = SharpenedSNN(net, "potential").run_batch(x, Meters())  # the IF network is built from net
    assert out.final().unique().tolist() == [1] and out.alternatives["readout_potential"].unique().tolist() == [0]


class _NestedConv(nn.Module):
    """A user's nested network: a conv stage in an ``nn.Sequential``, one conv already followed by
    its own BatchNorm, a functional ReLU on a dense layer."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.MaxPool2d(2))
        self.block = nn.Sequential(nn.Conv2d(3, 4, 2), nn.BatchNorm2d(4), nn.ReLU())
        self.fc = nn.Linear(4, 5)
        self.out = nn.Linear(5, 3)

    def forward(self, x):
        return self.out(torch.relu(self.fc(torch.flatten(self.block(self.stem(x)), 1))))


def test_the_batchnorm_recipe_normalises_every_spiking_layer_and_folds_away_exactly():
    """``batchnorm=true`` (Whetstone's convolutional example): a BatchNorm on the input of each
    activation that lacks one (2 of the 3) and of the readout's spiking layer — 3 new, the user's own
    kept (4 in all) — and after training they fold into the layer before each: no BatchNorm left,
    the same outputs at any sharpness, and the one-step IF network equal to the folded network.
    Wrong variants: a BatchNorm after the activation or none on the readout, a second one where
    the network has its own, a fold with training statistics or that drops β."""
    from harness.methods.sharpen import fold_batchnorm

    torch.manual_seed(0)
    net = build_sharpenable(_NestedConv(), (1, 7, 7), 3, SharpenParams(batchnorm=True, n_hot=2))
    bns = {n: m for n, m in net.gm.named_modules() if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d))}
    assert len(bns) == 4 and {type(m).__name__ for m in bns.values()} == {"BatchNorm1d", "BatchNorm2d"}
    assert bns["bn_readout"].num_features == 6
    feeds = {n.args[0].target for n in net.gm.graph.nodes
             if n.op == "call_module" and isinstance(net.gm.get_submodule(n.target), SharpenableActivation)}
    assert feeds == set(bns), feeds  # each activation reads a BatchNorm, and only those four exist
    x = torch.rand(32, 1, 7, 7)
    net.gm.train()
    with torch.no_grad():
        for _ in range(3):
            net.gm(x * 2.0)  # running statistics that differ from x's own batch statistics
        for m in bns.values():
            m.weight.uniform_(-2.0, 2.0)
            m.bias.uniform_(-1.0, 1.0)
    net.gm.eval()
    set_sharpness(net.activations, [0.6] * len(net.activations))
    with torch.no_grad():
        want = net.gm(x)
        fold_batchnorm(net)
        assert not any(isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)) for m in net.gm.modules())
        assert torch.allclose(net.gm(x), want, atol=1e-5)
        set_sharpness(net.activations, [1.0] * len(net.activations))  # the same modules steer the folded net
        assert float(net.gm.get_submodule("spike_out").sharpness) == 1.0
        assert torch.equal(to_spiking(net).eval()(x), net.gm(x))


def test_staged_sharpness_holds_each_layer_for_the_intermission_by_hand():
    """3 layers, duration 6 (2 epochs each), intermission 1: layer 0 over [0, 2], layer 1 over
    [3, 5], layer 2 over [6, 8]. Wrong variants: the gap ignored (layer 1 from 2), the whole
    duration given to each layer, the gap after the last layer counted."""
    from harness.methods.sharpen import staged_sharpness

    want = {0: [0, 0, 0], 1: [0.5, 0, 0], 2: [1, 0, 0], 2.5: [1, 0, 0], 3: [1, 0, 0], 4: [1, 0.5, 0],
            5: [1, 1, 0], 6.5: [1, 1, 0.25], 8: [1, 1, 1], 9: [1, 1, 1]}
    for t, values in want.items():
        assert staged_sharpness(t, 3, 6, 1) == pytest.approx(values), t


@pytest.mark.slow
def test_an_intermission_run_sharpens_layer_by_layer_with_pauses_and_a_schedule_too_long_is_refused(quick):
    """stpu-dnn's 3 layers, start 1, duration 3, intermission 1: at the ends of epochs 1–5 the
    sharpness is [1,0,0], [1,0,0], [1,1,0], [1,1,0], [1,1,1], and training stops after epoch 5."""
    res = run(quick(method="sharpen", model="stpu-dnn", eval_limit=40,
                    sets=("epochs=8", "start_epoch=1", "duration=3", "intermission=1")))
    steps = res.step_metrics
    got = [[steps[f"sharpen/sharpness/{n}"][e] for n in ("relu_fc1", "relu_fc2", "spike_out")] for e in range(6)]
    assert got == [[0, 0, 0], [1, 0, 0], [1, 0, 0], [1, 1, 0], [1, 1, 0], [1, 1, 1]]
    assert res.metrics["sharpen/epochs_trained"] == 6 and res.metrics["sharpen/sharpness_reached"] == 1.0
    with pytest.raises(ConfigError, match=r"end at epoch 9 but training has 8 epochs; valid: start_epoch \+ duration"):
        run(quick(method="sharpen", model="stpu-dnn", sets=("epochs=8", "start_epoch=2", "duration=3",
                                                              "intermission=2")))
    with pytest.raises(ConfigError, match="valid only with schedule=scheduled and bottom_up=true"):
        SharpenParams.from_strings({"intermission": "2", "bottom_up": "false"})


@pytest.mark.parametrize("kind", ["brelu", "sigmoid"])
def test_straight_through_steps_forward_exactly_and_passes_the_unsharpened_gradient_back(kind):
    """Forward: the step [x ≥ 0.5] (brelu) or [x ≥ 0] (sigmoid), exactly 0 or 1, a membrane at the
    threshold included. Backward: brelu clip((x − 0.5)/1.001 + 0.5, 0, 1)'s slope, 1/1.001 on
    (−0.0005, 1.0005) and 0 outside; sigmoid σ(kx)'s slope k·σ(kx)(1 − σ(kx)), k = 4·ln(2 + √3)/1.001.
    Wrong variants: the step's zero gradient, the sharpened slope 1/0.001, a forward value of
    soft + (step − soft) rounded off 0/1."""
    act = SharpenableActivation(kind)
    act.sharpness.fill_(1.0)
    act.straight_through = True
    x = torch.tensor([-0.1, -0.0004, 0.0, 0.3, 0.5, 0.9999, 1.2], requires_grad=True)
    y = act(x)
    thr = 0.5 if kind == "brelu" else 0.0
    assert y.tolist() == [1.0 if v >= thr else 0.0 for v in x.tolist()]
    y.sum().backward()
    if kind == "brelu":
        want = [1 / 1.001 if -0.0005 < v < 1.0005 else 0.0 for v in x.tolist()]
    else:
        k = 4.0 * math.log(2.0 + math.sqrt(3.0)) / 1.001
        want = [k * math.exp(-k * v) / (1.0 + math.exp(-k * v)) ** 2 for v in x.tolist()]
    assert x.grad.tolist() == pytest.approx(want, rel=1e-4)  # float32 against double
    with torch.no_grad():  # evaluation: the plain step
        assert torch.equal(act(x), y)


@pytest.mark.slow
def test_finetuning_trains_the_sharpened_network_for_its_epochs_and_keeps_it_binary(quick):
    """stpu-dnn on digits: sharpened by the end of epoch 4 (start 1, duration 3), then 3 epochs of
    straight-through fine-tuning: 7 epochs, sharpness 1 throughout the last 3, the validation
    accuracy of the step network recorded each epoch, the network as sharpening left it scored on
    its own, and the IF network equal to the fine-tuned step network. A fine-tuning that does not
    fit in the epochs is refused."""
    res = run(quick(method="sharpen", model="stpu-dnn", sets=("epochs=10", "start_epoch=1", "duration=3",
                                                               "finetune_epochs=3")))
    m, steps = res.metrics, res.step_metrics
    assert m["sharpen/epochs_trained"] == 7 and m["sharpen/snn_agreement"] == 1.0
    assert steps["sharpen/sharpness/relu_fc1"][3:] == [1.0] * 4 and steps["sharpen/sharpness/spike_out"][3:] == [1.0] * 4
    assert len(steps["sharpen/val/accuracy_sharpened"]) == 7
    assert 0 < m["sharpen/test/accuracy_before_finetune"] <= 1
    plain = run(quick(method="sharpen", model="stpu-dnn", sets=("epochs=10", "start_epoch=1", "duration=3")))
    # the same seed and schedule: identical until sharpening ends, so the fine-tuning starts from
    # the network the plain run ends with
    assert m["sharpen/test/accuracy_before_finetune"] == plain.metrics["sharpen/test/accuracy_lowest_index"]
    assert steps["sharpen/val/accuracy_sharpened"][:4] == plain.step_metrics["sharpen/val/accuracy_sharpened"]
    with pytest.raises(ConfigError, match=r"\(\+ 6 of fine-tuning\) but training has 10 epochs"):
        SharpenParams.from_strings({"epochs": "10", "start_epoch": "1", "duration": "4", "finetune_epochs": "6"})
