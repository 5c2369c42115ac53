"""Score-CAM (Wang et al., 2020) with pytorch-grad-cam's weighting.

Each activation channel, bilinearly upsampled to the input size (corners aligned) and min-max
normalised to [0, 1], masks the input image; the masked images go through the
whole model in batches. The channel weights are the softmax, over channels, of the
target's logit on each masked image (as pytorch-grad-cam computes them), and the
map is ``ReLU(sum_c w_c A_c)``.

``max_channels`` keeps only the channels with the highest mean activation (the
Faster-Score-CAM idea); the default ``None`` uses every channel, which costs one
model forward per channel (``ceil(C / batch_size)`` batched forwards per image).
A constant channel gives an all-zero mask.
"""

import torch
import torch.nn.functional as F
from torch import Tensor

from explainer.methods.base import CamMethod, Probe, forward_bar, perturbation_only


def channel_masks(activations: Tensor, height: int, width: int) -> Tensor:
    """``(N, C, H, W)`` masks: each channel upsampled (bilinear, ``align_corners=True`` like
    pytorch-grad-cam's ``UpsamplingBilinear2d``) and min-max normalised; constant -> 0."""
    up = F.interpolate(activations, size=(height, width), mode="bilinear", align_corners=True)
    lo = up.amin(dim=(-2, -1), keepdim=True)
    span = up.amax(dim=(-2, -1), keepdim=True) - lo
    return torch.where(span > 0, (up - lo) / torch.where(span > 0, span, torch.ones_like(span)), torch.zeros_like(up))


def scorecam_weights(activations: Tensor, probe: Probe) -> Tensor:
    """Score-CAM channel weights ``(N, K, C)`` for activations ``(N, C, h, w)``."""
    images = probe.images
    n_images, channels = activations.shape[:2]
    keep = channels if probe.max_channels is None else min(probe.max_channels, channels)
    weights = activations.new_zeros(n_images, probe.num_targets, channels)
    with torch.no_grad(), forward_bar(probe, "scorecam", n_images, keep) as bar:
        masks = channel_masks(activations, images.shape[-2], images.shape[-1])
        for n in range(n_images):
            chosen = activations[n].mean(dim=(-2, -1)).topk(keep).indices if keep < channels else \
                torch.arange(channels, device=activations.device)
            scores = []
            for start in range(0, keep, probe.batch_size):
                index = chosen[start:start + probe.batch_size]
                masked = images[n:n + 1] * masks[n, index][:, None]
                scores.append(probe.scores_of_image(probe.model(masked), n))  # (b, K)
                bar.update(1)
            weights[n][:, chosen] = torch.cat(scores).T.softmax(dim=-1)
    return weights


METHOD = CamMethod(
    "scorecam", perturbation_only, "softmax of the target logit on images masked by each channel (model forwards)",
    needs_gradient=False, perturbation=scorecam_weights, reruns_model=True, order=10,
)
