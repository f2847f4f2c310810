import pytest
from harness.errors import ConfigError, HarnessError
from harness.methods.prune import Prune, polynomial_sparsity, pruning_amount
from harness.runner import run


def test_polynomial_schedule_reaches_target_and_amounts_compound():
    s_f, start, ramp = 0.9, 5, 8
    assert polynomial_sparsity(4, 0.0, s_f, start, ramp) == 0.0
    assert polynomial_sparsity(start + ramp - 1, 0.0, s_f, start, ramp) == pytest.approx(s_f)
    remaining = 1.0
    for epoch in range(30):
        remaining *= 1.0 - pruning_amount(epoch, 0.0, s_f, start, ramp)
        assert 1.0 - remaining == pytest.approx(polynomial_sparsity(epoch, 0.0, s_f, start, ramp))
    increments = [polynomial_sparsity(e, 0.0, s_f, start, ramp) - polynomial_sparsity(e - 1, 0.0, s_f, start, ramp)
                  for e in range(start + 1, start + ramp)]
    assert increments == sorted(increments, reverse=True)  # cubic: fast first, then gentle


@pytest.mark.parametrize("sets,needle", [
    ({"final_sparsity": "0.99"}, "final_sparsity=0.99 is out of range; valid range is [0, 0.95]"),
    ({"final_sparsity": "-0.1"}, "valid range is [0, 0.95]"),
    ({"start_epoch": "18", "ramp_epochs": "8", "epochs": "20"}, "the schedule ends at epoch 26"),
])
def test_bad_schedules(sets, needle):
    with pytest.raises(ConfigError) as err:
        Prune.Params.from_strings(sets)
    assert needle in str(err.value)


@pytest.mark.slow
def test_prune_then_ttfs_composes_and_cuts_synops(quick):
    sets = ("prune.epochs=4", "prune.start_epoch=1", "prune.ramp_epochs=2", "prune.final_sparsity=0.85",
            "t_max=16", "t_max_sweep=", "fig2=false")
    dense = run(quick(method="ttfs", sets=tuple(s for s in sets if not s.startswith("prune."))))
    pruned = run(quick(method="prune+ttfs", sets=sets))
    assert pruned.metrics["connection_sparsity"] == pytest.approx(0.85, abs=0.01)
    assert dense.metrics["connection_sparsity"] == 0.0
    assert pruned.metrics["synops"] < 0.5 * dense.metrics["synops"]
    assert len(pruned.step_metrics["prune/sparsity"]) == 4
    assert "prune/ann/test/accuracy" in pruned.metrics
    assert pruned.params["prune.final_sparsity"] == 0.85


def test_chain_errors(quick):
    with pytest.raises(HarnessError, match="cannot precede another method"):
        run(quick(method="ttfs+prune"))
    with pytest.raises(HarnessError, match="Did you mean 'prune'"):
        run(quick(method="prun+ttfs"))


def test_the_schedule_follows_epochs_set_alone_and_an_explicit_one_is_kept_or_refused():
    """Defaults: 20 epochs, pruning from epoch 5 over 8. ``epochs=3`` alone scales them (start
    round(5·3/20) = 1, ramp round(8·3/20) = 1); a schedule the user set is never rescaled."""
    p = Prune.Params.from_strings({"epochs": "3"})
    assert (p.epochs, p.start_epoch, p.ramp_epochs) == (3, 1, 1)
    p = Prune.Params.from_strings({"epochs": "40"})
    assert (p.start_epoch, p.ramp_epochs) == (10, 16)
    p = Prune.Params.from_strings({"epochs": "1"})
    assert (p.start_epoch, p.ramp_epochs) == (0, 1)  # the ramp fits: it starts at once
    assert Prune.Params.from_strings({}) == Prune.Params()  # nothing set: the defaults
    kept = Prune.Params.from_strings({"epochs": "12", "start_epoch": "2"})
    assert (kept.start_epoch, kept.ramp_epochs) == (2, 8)  # start set: the ramp keeps its default
    with pytest.raises(ConfigError, match="the schedule ends at epoch 13 but training has 3 epochs"):
        Prune.Params.from_strings({"epochs": "3", "start_epoch": "5"})


def test_a_chain_whose_transform_sets_only_its_epochs_runs(quick):
    """``--set prune.epochs=2`` alone was refused (the default schedule ends at epoch 13)."""
    res = run(quick(method="prune+rate", model="dnn5", eval_limit=40,
                    sets=("prune.epochs=2", "timesteps=4")))
    assert res.params["prune.start_epoch"] == 0 and res.params["prune.ramp_epochs"] == 1
    assert res.metrics["prune/connection_sparsity"] == pytest.approx(0.8, abs=1e-3)


def test_the_schedule_by_hand_on_its_first_and_last_steps():
    """Zhu & Gupta, s_t = s_f + (s_i − s_f)(1 − (t − t_0)/(nΔt))³, pruning at the end of each epoch:
    epoch e of a ramp from ``start`` over ``ramp`` epochs is step t − t_0 = e − start + 1. Hand
    values for s_i = 0, s_f = 0.8, start 2, ramp 4. Wrong variants: the first pruning a step late
    (t − t_0 = e − start), the ramp ending a step early or late, a square for the cube."""
    values = [polynomial_sparsity(e, 0.0, 0.8, 2, 4) for e in range(8)]
    assert values == pytest.approx([0.0, 0.0, 0.8 - 0.8 * 0.75 ** 3, 0.8 - 0.8 * 0.5 ** 3, 0.8 - 0.8 * 0.25 ** 3,
                                    0.8, 0.8, 0.8])
    amounts = [pruning_amount(e, 0.0, 0.8, 2, 4) for e in range(8)]
    assert amounts[:2] == [0.0, 0.0] and amounts[6:] == [0.0, 0.0]  # nothing before the ramp or after it
    assert amounts[2] == pytest.approx(0.4625)  # the first step prunes from the dense network
    assert amounts[3] == pytest.approx(1 - 0.3 / 0.5375)  # of the remaining 53.75 %, down to 30 %
    assert amounts[5] == pytest.approx(1 - 0.2 / 0.2125)  # the last step lands on s_f exactly


def test_an_initial_sparsity_is_applied_with_the_first_step():
    """s_i = 0.2: before the ramp nothing is pruned; the first step goes from dense to its own
    target at once (0.8 − 0.6·0.75³), not from 0.2."""
    assert pruning_amount(1, 0.2, 0.8, 2, 4) == 0.0
    assert pruning_amount(2, 0.2, 0.8, 2, 4) == pytest.approx(0.8 - 0.6 * 0.75 ** 3)
    assert polynomial_sparsity(1, 0.2, 0.8, 2, 4) == 0.2  # the schedule's value before the ramp
    remaining = 1.0
    for e in range(8):
        remaining *= 1 - pruning_amount(e, 0.2, 0.8, 2, 4)
    assert 1 - remaining == pytest.approx(0.8)
