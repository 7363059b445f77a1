"""Group advantages (GRPO, Shao et al. 2024; Dr. GRPO, Liu et al. 2025; RLOO, Ahmadian et al. 2024) against
hand-computed values and verl's formulas, outcome broadcast, length bias, and the estimator registry."""

import pytest
import torch

from dvpo_lab.algos import ALGORITHMS, agg_loss, get_algo, group_advantages, register_algo
from tests.algos.helpers import algo_config, call_estimator

ONE_GROUP = torch.zeros(4, dtype=torch.long)
REWARDS = torch.tensor([1.0, 0.0, 0.0, 1.0])


def test_group_advantage_oracle():  # rewards [1, 0, 0, 1], hand-computed
    sign = torch.tensor([1.0, -1.0, -1.0, 1.0])
    grpo = group_advantages(REWARDS, ONE_GROUP)
    torch.testing.assert_close(grpo, 0.8660254 * sign, atol=1e-4, rtol=0)
    dr = group_advantages(REWARDS, ONE_GROUP, norm_by_std=False)
    torch.testing.assert_close(dr, 0.5 * sign)
    rloo = group_advantages(REWARDS, ONE_GROUP, norm_by_std=False, leave_one_out=True)
    torch.testing.assert_close(rloo, 2.0 / 3.0 * sign)
    # RLOO is the reward minus the mean of the other G-1 rewards.
    loo_mean = (REWARDS.sum() - REWARDS) / 3
    torch.testing.assert_close(rloo, REWARDS - loo_mean)


def test_group_advantage_sums_and_std():  # zero sum per group, unit std for GRPO
    scores = torch.tensor([1.0, 0.0, 0.3, 2.0, -1.0, 0.5, 0.5, 4.0])
    index = torch.tensor([7, 7, 7, 3, 3, 42, 42, 42])  # arbitrary, non-contiguous ids
    for kwargs in [
        {},
        {"norm_by_std": False},
        {"norm_by_std": False, "leave_one_out": True},
        {"leave_one_out": True},
    ]:
        adv = group_advantages(scores, index, **kwargs)
        for gid in index.unique():
            assert abs(adv[index == gid].sum().item()) < 1e-5
    adv = group_advantages(scores, index)
    for gid in index.unique():
        assert adv[index == gid].std().item() == pytest.approx(1.0, abs=1e-4)


def test_group_advantage_constant_and_singleton():  # verl: a group of size 1 has mean 0, std 1
    adv = group_advantages(torch.ones(4), ONE_GROUP)
    assert torch.all(adv == 0) and torch.isfinite(adv).all()
    single = group_advantages(torch.tensor([0.7, 1.0, 0.0]), torch.tensor([5, 9, 9]))
    assert single[0].item() == pytest.approx(0.7, abs=1e-5)  # group of size 1: mean 0, std 1
    for kwargs in [{"norm_by_std": False}, {"norm_by_std": False, "leave_one_out": True}]:
        assert group_advantages(torch.tensor([0.7]), torch.tensor([0]), **kwargs).item() == pytest.approx(0.7)


@pytest.mark.parametrize(("a", "b"), [(2.0, 0.5), (0.3, -1.0), (10.0, 3.0)])
def test_group_advantage_affine(a, b):  # a*r + b: GRPO unchanged, Dr. GRPO scaled by a
    scores = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.2, 0.9])
    index = torch.tensor([0, 0, 0, 0, 1, 1])
    base = group_advantages(scores, index)
    torch.testing.assert_close(group_advantages(a * scores + b, index), base, atol=1e-4, rtol=0)
    dr = group_advantages(scores, index, norm_by_std=False)
    torch.testing.assert_close(group_advantages(a * scores + b, index, norm_by_std=False), a * dr)


def test_grpo_estimator_broadcast():  # one advantage per response, 0 on padding
    m = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [1, 0, 0, 0], [1, 1, 1, 1]]).float()
    rewards = torch.zeros(4, 4)
    last = torch.tensor([2, 1, 0, 3])
    rewards[torch.arange(4), last] = REWARDS
    adv, ret = call_estimator("grpo", rewards, m, group_index=ONE_GROUP)
    expected = group_advantages(REWARDS, ONE_GROUP)
    torch.testing.assert_close(adv, expected.unsqueeze(-1) * m)
    torch.testing.assert_close(ret, adv)
    dr, _ = call_estimator("grpo", rewards, m, group_index=ONE_GROUP, norm_adv_by_std=False)
    torch.testing.assert_close(dr, torch.tensor([0.5, -0.5, -0.5, 0.5]).unsqueeze(-1) * m)


def test_grpo_estimator_ignores_padded_rewards():
    m = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    rewards = torch.tensor([[0.0, 1.0, 5.0], [0.0, 9.0, 9.0]])  # junk beyond the mask
    adv, _ = call_estimator("grpo", rewards, m, group_index=torch.tensor([0, 0]), norm_adv_by_std=False)
    torch.testing.assert_close(adv, torch.tensor([[0.5, 0.5, 0.0], [-0.5, 0.0, 0.0]]))


def test_grpo_estimator_requires_group_index():
    with pytest.raises(ValueError, match="group_index"):
        call_estimator("grpo", torch.zeros(2, 3), torch.ones(2, 3))


def test_length_bias():  # Liu et al. 2025: GRPO's 1/|o| length bias
    t_max = 6
    short = torch.zeros(2, t_max)
    short[0, :2] = 1.0
    long = torch.zeros(2, t_max)
    long[0, :4] = 1.0
    other = torch.zeros(2, t_max)
    other[1, :3] = 1.0
    loss = torch.ones(2, t_max)  # same per-token loss
    for mode, factor in [("dr-grpo", 2.0), ("seq-mean-token-sum-norm", 2.0), ("seq-mean-token-mean", 1.0)]:
        # Contribution of sequence 0 = loss with it minus loss without it (sequence 1 fixed).
        c_short = agg_loss(loss, short + other, mode, t_max) - agg_loss(
            loss * torch.tensor([[0.0], [1.0]]), short + other, mode, t_max
        )
        c_long = agg_loss(loss, long + other, mode, t_max) - agg_loss(
            loss * torch.tensor([[0.0], [1.0]]), long + other, mode, t_max
        )
        assert c_long.item() == pytest.approx(factor * c_short.item()), mode


def test_registry_lookup_and_errors():
    assert {"gae", "grpo", "dist_gae"} <= set(ALGORITHMS)
    assert get_algo("dist_gae").critic == "quantile" and get_algo("grpo").grouped and not get_algo("gae").grouped
    with pytest.raises(ValueError, match="'gae'"):
        get_algo("nope")

    def fake(token_rewards, mask, *, values, group_index, config):
        return token_rewards, token_rewards

    try:
        assert register_algo("_test_fake", critic="none")(fake) is fake
        assert register_algo("_test_fake", critic="none")(fake) is fake  # re-registering the same function is fine
        assert get_algo("_test_fake").estimator is fake
        with pytest.raises(ValueError, match="already registered"):
            register_algo("_test_fake", critic="none")(lambda token_rewards, mask, **_: (token_rewards, token_rewards))
        with pytest.raises(ValueError, match="no critic_loss"):
            register_algo("_test_fake2", critic="scalar")(fake)
    finally:
        ALGORITHMS.pop("_test_fake", None)


@pytest.mark.parametrize("name", ["gae", "grpo"])
def test_estimators_take_the_algo_node_and_refuse_a_misspelt_knob(name):
    m = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    r = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    kw = {"values": torch.rand(2, 3), "group_index": torch.tensor([0, 0])}
    adv, ret = get_algo(name).estimator(r, m, config=algo_config(), **kw)
    assert adv.shape == ret.shape == (2, 3)
    assert torch.all(adv[~m.bool()] == 0) and torch.isfinite(adv).all()
    with pytest.raises(TypeError):  # no **kwargs swallowing a misspelt keyword any more
        get_algo(name).estimator(r, m, config=algo_config(), norm_adv_by_sdt=False, **kw)
