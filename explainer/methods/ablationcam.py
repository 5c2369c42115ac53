"""Ablation-CAM (Desai & Ramaswamy, 2020), running only the head.

For each channel c, the activations with channel c set to zero go through the
head (batched, ``batch_size`` copies per forward); the weight is the relative drop
of the target score, ``w_c = (S - S_c) / S``, and the map ``ReLU(sum_c w_c A_c)``,
as in pytorch-grad-cam (which re-runs the whole network instead of only the head).
Cost: ``ceil(C / batch_size)`` head forwards per image, no backbone re-run, no gradient.
K targets per image share the same forwards.
"""

import torch
from torch import Tensor

from explainer.errors import MethodError
from explainer.methods.base import CamMethod, Probe, forward_bar, perturbation_only


def ablation_scores(activations: Tensor, probe: Probe) -> Tensor:
    """Target scores with each channel zeroed: ``(N, K, C)``."""
    n_images, channels = activations.shape[:2]
    out = activations.new_empty(n_images, probe.num_targets, channels)
    with torch.no_grad(), forward_bar(probe, "ablationcam", n_images, channels) as bar:
        for n in range(n_images):
            for start in range(0, channels, probe.batch_size):
                index = torch.arange(start, min(start + probe.batch_size, channels), device=activations.device)
                batch = activations[n:n + 1].repeat(len(index), 1, 1, 1)
                batch[torch.arange(len(index), device=batch.device), index] = 0
                output = probe.head(batch, *probe.skips_for(n, len(index)))
                out[n, :, start:start + len(index)] = probe.scores_of_image(output, n).T
                bar.update(1)
    return out


def ablationcam_weights(activations: Tensor, probe: Probe) -> Tensor:
    """Ablation-CAM channel weights ``(N, K, C)`` for activations ``(N, C, h, w)``."""
    with torch.no_grad():
        base = probe.score(probe.head(activations.clone(), *probe.skips), None)  # (N, K)
        zero = (base == 0).nonzero()
        if len(zero):
            n, k = (int(v) for v in zero[0])
            raise MethodError(
                f"image {n}'s target score (target {k}) is exactly 0, so Ablation-CAM's weights "
                "(S - S_c) / S are undefined; explain another class, or use scorecam or a gradient method"
            )
        ablated = ablation_scores(activations, probe)
        return (base[:, :, None] - ablated) / base[:, :, None]


METHOD = CamMethod(
    "ablationcam", perturbation_only, "relative score drop when each channel is zeroed (head-only forwards, no gradient)",
    needs_gradient=False, perturbation=ablationcam_weights, reruns_head=True, order=9,
)
