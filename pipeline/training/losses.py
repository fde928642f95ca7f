"""The two preference objectives, as pure functions of per-sample denoising errors.

Both compare the adapted UNet's error `e` with the reference UNet's error `r` (the same UNet with its
adapters disabled) on the same noisy latent, noise and timestep. A lower error means a higher
likelihood of the image under the model (the diffusion ELBO), so `r − e > 0` says "the adapter made
this image more likely than the base model finds it".

Diffusion-DPO (Wallace et al. 2023; diffusers' `examples/research_projects/diffusion_dpo`):

    logits = (r_w − r_l) − (e_w − e_l)          w = preferred image, l = the other, same noise and t
    loss   = −log σ(β · logits)                  mean over pairs
    implicit accuracy = mean(logits > 0), a tie (logits == 0) counting one half

Diffusion-KTO (Li et al. 2024), per image with a like/dislike label:

    g    = r − e                                 (−(e − r))
    z    = max(mean g over the batch, 0)         detached: a reference point, not a path for gradients
    loss = λ_y · (1 − σ(β · s_y · (g − z)))      s = +1 desirable, −1 undesirable; mean over the batch
    implicit accuracy = mean(sign(g) == s), g == 0 counting one half

Ties count one half, as in diffusers' DPO script, so that an untrained adapter (every logit exactly 0)
scores 0.5 (chance) rather than 0, and a held-out accuracy above 0.5 means the adapter ranks unseen
images the way the voters did more often than not.

Scale of β: the errors are mean squared errors over a latent (≈ 0.1 to 1 for a trained model) and a
LoRA changes them by ~1e-4 to 1e-3, so β is in the thousands: 2500 for DPO on SD 1.5 (the DPO recipe)
and 1000 for KTO (Diffusion-KTO's examples).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

DPO_BETA = 2500.0
KTO_BETA = 1000.0


def per_sample_error(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error of each sample (all dimensions but the first), in float32."""
    squared = (prediction.float() - target.float()) ** 2
    return squared.mean(dim=tuple(range(1, squared.ndim)))


def _accuracy(scores: torch.Tensor) -> torch.Tensor:
    """Fraction of positive scores, a zero counting one half."""
    return ((scores > 0).float() + 0.5 * (scores == 0).float()).mean()


def dpo_logits(model_err_w: torch.Tensor, model_err_l: torch.Tensor, ref_err_w: torch.Tensor,
               ref_err_l: torch.Tensor) -> torch.Tensor:
    """How much more the adapter favours the winner over the loser than the reference does."""
    return (ref_err_w - ref_err_l) - (model_err_w - model_err_l)


def dpo_loss(model_err_w: torch.Tensor, model_err_l: torch.Tensor, ref_err_w: torch.Tensor,
             ref_err_l: torch.Tensor, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Diffusion-DPO (sigmoid) loss and implicit accuracy of a batch of pairs (1-D error tensors)."""
    logits = dpo_logits(model_err_w, model_err_l, ref_err_w, ref_err_l)
    loss = -F.logsigmoid(beta * logits).mean()
    return loss, _accuracy(logits.detach())


def kto_example_losses(model_err: torch.Tensor, ref_err: torch.Tensor, desirable: torch.Tensor, beta: float, *,
                       desirable_weight: float = 1.0, undesirable_weight: float = 1.0) -> torch.Tensor:
    """Diffusion-KTO loss of each labelled image of a batch (1-D tensors; `desirable` is boolean).

    The reference point is computed from this batch only, which is why the trainer samples both
    classes equally often: an all-desirable batch would push z up and teach "better than the batch
    average" instead of "liked".
    """
    g = ref_err - model_err
    z = g.detach().mean().clamp(min=0)
    sign = desirable.to(g.dtype) * 2 - 1
    weight = torch.where(desirable, torch.as_tensor(desirable_weight, dtype=g.dtype, device=g.device),
                         torch.as_tensor(undesirable_weight, dtype=g.dtype, device=g.device))
    return weight * (1 - torch.sigmoid(beta * sign * (g - z)))


def kto_loss(model_err: torch.Tensor, ref_err: torch.Tensor, desirable: torch.Tensor, beta: float, *,
             desirable_weight: float = 1.0, undesirable_weight: float = 1.0
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Diffusion-KTO loss (mean over the batch) and implicit accuracy of a batch of labelled images."""
    losses = kto_example_losses(model_err, ref_err, desirable, beta, desirable_weight=desirable_weight,
                                undesirable_weight=undesirable_weight)
    sign = desirable.to(model_err.dtype) * 2 - 1
    return losses.mean(), _accuracy((sign * (ref_err - model_err)).detach())
