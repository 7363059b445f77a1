"""GAE (Schulman et al. 2016) against the hand-computed recursion, verl's carry-through masking
(`compute_gae_advantage_return`) and returns taken before whitening."""

import pytest
import torch

from dvpo_lab.algos import compute_gae, masked_mean, masked_var
from tests.algos.helpers import call_estimator

R = torch.tensor([[0.0, 0.0, 1.0]])
V = torch.tensor([[0.5, 0.6, 0.7]])
M = torch.ones(1, 3)


@pytest.mark.parametrize(
    ("gamma", "lam", "expected_adv"),
    [
        (1.0, 1.0, [0.5, 0.4, 0.3]),  # lambda = 1: return-to-go minus V
        (1.0, 0.0, [0.1, 0.1, 0.3]),  # lambda = 0: A = delta
        (1.0, 0.5, [0.225, 0.25, 0.3]),  # hand-computed recursion
    ],
)
def test_gae_oracles(gamma, lam, expected_adv):
    adv, ret = compute_gae(R, V, M, gamma=gamma, lam=lam)
    torch.testing.assert_close(adv, torch.tensor([expected_adv]))
    torch.testing.assert_close(ret, adv + V)


def test_gae_monte_carlo_returns():
    _, ret = compute_gae(R, V, M, gamma=1.0, lam=1.0)
    torch.testing.assert_close(ret, torch.ones(1, 3))


def test_gae_discount():
    # gamma = 0.9, lam = 1: A_0 = 0.81 * 1 - 0.5.
    adv, _ = compute_gae(R, V, M, gamma=0.9, lam=1.0)
    torch.testing.assert_close(adv, torch.tensor([[0.81 - 0.5, 0.9 - 0.6, 1.0 - 0.7]]))


def test_gae_appended_padding_is_invisible():  # trailing pads change no valid output
    r = torch.tensor([[0.0, 0.0, 1.0, 0.0, 0.0]])
    v = torch.tensor([[0.5, 0.6, 0.7, 9.0, -3.0]])  # arbitrary values at pads
    m = torch.tensor([[1.0, 1.0, 1.0, 0.0, 0.0]])
    for gamma, lam in [(1.0, 1.0), (1.0, 0.5), (0.9, 0.95)]:
        adv, ret = compute_gae(r, v, m, gamma, lam)
        ref_adv, ref_ret = compute_gae(R, V, M, gamma, lam)
        torch.testing.assert_close(adv[:, :3], ref_adv)
        torch.testing.assert_close(ret[:, :3], ref_ret)
        assert torch.all(adv[:, 3:] == 0) and torch.all(ret[:, 3:] == 0)


def test_gae_inserted_masked_tokens_are_invisible():  # verl carry-through
    r = torch.tensor([[0.0, 7.0, 0.0, 5.0, 1.0]])  # rewards at masked slots are ignored too
    v = torch.tensor([[0.5, 4.0, 0.6, float("nan"), 0.7]])  # even NaN at a masked slot
    m = torch.tensor([[1, 0, 1, 0, 1]], dtype=torch.bool)
    adv, ret = compute_gae(r, v, m, 1.0, 0.5)
    ref_adv, ref_ret = compute_gae(R, V, M, 1.0, 0.5)
    torch.testing.assert_close(adv[:, [0, 2, 4]], ref_adv)
    torch.testing.assert_close(ret[:, [0, 2, 4]], ref_ret)
    assert torch.all(adv[:, [1, 3]] == 0)


def test_gae_batch_rows_independent():
    r = torch.tensor([[0.0, 0.0, 1.0], [0.0, 2.0, 0.0]])
    v = torch.tensor([[0.5, 0.6, 0.7], [0.1, 0.2, 0.3]])
    m = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    adv, _ = compute_gae(r, v, m, 1.0, 1.0)
    torch.testing.assert_close(adv, torch.tensor([[0.5, 0.4, 0.3], [1.9, 1.8, 0.0]]))


def test_gae_has_no_grad():
    v = V.clone().requires_grad_(True)
    adv, ret = compute_gae(R, v, M, 1.0, 1.0)
    assert not adv.requires_grad and not ret.requires_grad


def test_gae_estimator_returns_before_whitening():  # returns = A + V before whitening, as in verl
    r = torch.tensor([[0.0, 0.0, 1.0, 0.0], [0.0, 0.5, 0.0, 0.0]])
    v = torch.tensor([[0.5, 0.6, 0.7, 3.0], [0.2, 0.1, 0.4, 0.3]])
    m = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    raw_adv, raw_ret = compute_gae(r, v, m, 1.0, 0.95)
    adv, ret = call_estimator("gae", r, m, values=v, gamma=1.0, lam=0.95)
    torch.testing.assert_close(ret, raw_ret)  # whitening leaves returns untouched
    torch.testing.assert_close(ret * m, (raw_adv + v) * m)
    assert abs(masked_mean(adv, m).item()) < 1e-6
    assert abs(masked_var(adv, m).item() - 1.0) < 1e-4
    raw, _ = call_estimator("gae", r, m, values=v, gamma=1.0, lam=0.95, whiten_advantages=False)
    torch.testing.assert_close(raw, raw_adv)


def test_gae_estimator_requires_values():
    with pytest.raises(ValueError, match="values"):
        call_estimator("gae", R, M)


def test_gae_shape_mismatch_raises():
    with pytest.raises(ValueError, match="shape"):
        compute_gae(R, V[:, :2], M, 1.0, 1.0)
