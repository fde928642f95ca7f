"""The Diffusion-DPO and Diffusion-KTO objectives, as pure functions of per-sample errors."""

from __future__ import annotations

import math

import pytest
import torch

from pipeline.training import dpo_loss, kto_example_losses, kto_loss, per_sample_error

LN2 = math.log(2)


def t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def test_dpo_loss_is_ln2_when_the_adapter_changes_nothing() -> None:
    """Equal model and reference errors (an untrained adapter): loss ln 2, accuracy one half (all ties)."""
    errors_w, errors_l = t(0.3, 0.9, 1.2), t(0.5, 0.1, 1.2)
    loss, accuracy = dpo_loss(errors_w, errors_l, errors_w.clone(), errors_l.clone(), beta=2500.0)
    assert abs(float(loss) - LN2) < 1e-6
    assert float(accuracy) == 0.5


def test_dpo_loss_hand_computed() -> None:
    """β = 1: logits = (r_w − r_l) − (e_w − e_l) = 1, −2, 0; loss = mean of −log σ(logit)."""
    model_w, model_l = t(0.5, 1.0, 0.2), t(1.0, 0.0, 0.2)
    ref_w, ref_l = t(1.0, 0.0, 0.7), t(0.5, 1.0, 0.7)
    # logits: (1.0 − 0.5) − (0.5 − 1.0) = 1; (0 − 1) − (1 − 0) = −2; (0.7 − 0.7) − (0.2 − 0.2) = 0
    expected = (math.log(1 + math.exp(-1)) + math.log(1 + math.exp(2)) + math.log(2)) / 3  # 0.9974...
    loss, accuracy = dpo_loss(model_w, model_l, ref_w, ref_l, beta=1.0)
    assert float(loss) == pytest.approx(expected, abs=1e-12)
    assert float(accuracy) == pytest.approx((1 + 0 + 0.5) / 3)  # a win, a loss, a tie


def test_dpo_beta_scales_the_logits() -> None:
    """β = 1000 on a logit of 0.001 is the same loss as β = 1 on a logit of 1: −log σ(1) = 0.31326."""
    loss, _ = dpo_loss(t(0.0), t(0.001), t(0.0), t(0.0), beta=1000.0)
    assert float(loss) == pytest.approx(0.31326168751822286, abs=1e-9)


def test_dpo_gradient_lowers_the_winner_error() -> None:
    """The gradient of the loss w.r.t. the winner's error is positive (descent lowers it), the loser's negative."""
    model_w, model_l = t(0.4).requires_grad_(), t(0.6).requires_grad_()
    loss, _ = dpo_loss(model_w, model_l, t(0.5), t(0.5), beta=2.0)
    loss.backward()
    assert model_w.grad is not None and model_l.grad is not None
    assert float(model_w.grad) > 0 > float(model_l.grad)


@pytest.mark.parametrize(("desirable_weight", "undesirable_weight"), [(1.0, 1.0), (2.0, 0.5)])
def test_kto_at_init_each_example_loses_half_its_weight(desirable_weight: float, undesirable_weight: float) -> None:
    """g = 0 everywhere: each example's loss is λ_y · (1 − σ(0)) = 0.5 · λ_y; accuracy one half (ties)."""
    errors = t(0.2, 0.8, 1.1, 0.4)
    desirable = torch.tensor([True, False, True, False])
    losses = kto_example_losses(errors, errors.clone(), desirable, 1000.0, desirable_weight=desirable_weight,
                                undesirable_weight=undesirable_weight)
    assert losses.tolist() == [0.5 * desirable_weight, 0.5 * undesirable_weight] * 2
    loss, accuracy = kto_loss(errors, errors.clone(), desirable, 1000.0, desirable_weight=desirable_weight,
                              undesirable_weight=undesirable_weight)
    assert float(loss) == pytest.approx(0.25 * (desirable_weight + undesirable_weight))
    assert float(accuracy) == 0.5


def test_kto_hand_computed_with_a_positive_reference_point() -> None:
    """β = 1, g = r − e = (2, 0, −1, 3): z = mean g = 1; losses λ·(1 − σ(s·(g − z)))."""
    model, ref = t(0.0, 1.0, 2.0, 0.0), t(2.0, 1.0, 1.0, 3.0)
    desirable = torch.tensor([True, True, False, False])

    def sigmoid(x: float) -> float:
        return 1 / (1 + math.exp(-x))

    # g − z = 1, −1, −2, 2; signs +, +, −, −
    expected = [1 - sigmoid(1), 1 - sigmoid(-1), 1 - sigmoid(2), 1 - sigmoid(-2)]
    losses = kto_example_losses(model, ref, desirable, 1.0)
    assert losses.tolist() == pytest.approx(expected, abs=1e-12)
    _, accuracy = kto_loss(model, ref, desirable, 1.0)
    # sign(g) vs label: 2 > 0 desirable ✓, 0 tie (½), −1 < 0 undesirable ✓, 3 > 0 undesirable ✗
    assert float(accuracy) == pytest.approx((1 + 0.5 + 1 + 0) / 4)


def test_kto_reference_point_is_clamped_at_zero() -> None:
    """Mean g < 0: z = 0, so each loss is λ·(1 − σ(β·s·g)) with g itself."""
    model, ref = t(1.0, 1.0), t(0.0, 0.5)  # g = −1, −0.5: mean −0.75, clamped to 0
    desirable = torch.tensor([True, False])
    losses = kto_example_losses(model, ref, desirable, 1.0)
    assert losses.tolist() == pytest.approx([1 - 1 / (1 + math.exp(1)), 1 - 1 / (1 + math.exp(-0.5))], abs=1e-12)


def test_kto_reference_point_carries_no_gradient() -> None:
    """z is detached: each example's gradient is that of its own term, as if z were a constant."""
    model = t(0.0, 1.0, 0.5).requires_grad_()
    ref = t(1.0, 1.5, 1.0)  # g = 1, 0.5, 0.5: z = 2/3
    desirable = torch.tensor([True, False, True])
    kto_example_losses(model, ref, desirable, 1.0).sum().backward()
    z = 2 / 3
    expected = []
    for g, s in ((1.0, 1), (0.5, -1), (0.5, 1)):
        sig = 1 / (1 + math.exp(-s * (g - z)))
        expected.append(s * sig * (1 - sig))  # d/de [1 − σ(s·(r − e − z))] with z constant
    assert model.grad is not None
    assert model.grad.tolist() == pytest.approx(expected, abs=1e-12)


def test_per_sample_error_is_a_mean_over_all_but_the_batch_dimension() -> None:
    """[2, 1, 2, 2] prediction against zeros: the mean of squares of each sample, in float32."""
    prediction = torch.tensor([[[[1.0, 1.0], [1.0, 1.0]]], [[[2.0, 0.0], [0.0, 0.0]]]], dtype=torch.bfloat16)
    errors = per_sample_error(prediction, torch.zeros_like(prediction))
    assert errors.dtype == torch.float32
    assert errors.tolist() == [1.0, 1.0]
