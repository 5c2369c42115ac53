"""ReciproCAM (Byun & Lee, 2022; OpenVINO XAI's default), running only the head, no gradient.

For each position (i, j) of the ``h x w`` map, the activations are kept only at and around it:
multiplied by a 3x3 Gaussian kernel (1/4 at the centre, 1/8 at the edges, 1/16 at the corners)
centred at (i, j), zero elsewhere (cropped at the border, not renormalised). The head re-scores
each such "mosaic" copy, and the map at (i, j) is the target's softmax probability on it (its
score, for target callables that are not classes). Cost: ``h * w`` head forwards per image,
batched ``batch_size`` at a time; K targets per image share them.
"""

import torch
import torch.nn.functional as F
from torch import Tensor

from explainer.methods.base import CamMethod, Probe, forward_bar, perturbation_only

#: The 3x3 kernel of the paper's Gaussian variant.
KERNEL = ((1 / 16, 1 / 8, 1 / 16), (1 / 8, 1 / 4, 1 / 8), (1 / 16, 1 / 8, 1 / 16))


def position_masks(height: int, width: int, like: Tensor) -> Tensor:
    """``(h * w, 1, h, w)``: mask ``p = i * w + j`` is :data:`KERNEL` centred at ``(i, j)``, cropped."""
    points = torch.eye(height * width, dtype=like.dtype, device=like.device).reshape(-1, 1, height, width)
    kernel = torch.tensor(KERNEL, dtype=like.dtype, device=like.device).reshape(1, 1, 3, 3)
    return F.conv2d(points, kernel, padding=1)  # the kernel is symmetric: correlation = convolution


def reciprocam_maps(activations: Tensor, probe: Probe) -> Tensor:
    """ReciproCAM raw maps ``(N, K, h, w)`` for activations ``(N, C, h, w)``."""
    n_images, _, height, width = activations.shape
    masks = position_masks(height, width, activations)
    positions = height * width
    out = activations.new_empty(n_images, probe.num_targets, positions)
    with torch.no_grad(), forward_bar(probe, "reciprocam", n_images, positions) as bar:
        for n in range(n_images):
            for start in range(0, positions, probe.batch_size):
                chosen = masks[start:start + probe.batch_size]
                batch = activations[n:n + 1] * chosen
                output = probe.head(batch, *probe.skips_for(n, len(chosen)))
                if probe.class_scores:
                    output = output.softmax(dim=1)
                out[n, :, start:start + len(chosen)] = probe.scores_of_image(output, n).T
                bar.update(1)
    return out.reshape(n_images, probe.num_targets, height, width)


METHOD = CamMethod(
    "reciprocam", perturbation_only,
    "softmax score of the head on the map kept only around each position (h*w head forwards, no gradient)",
    needs_gradient=False, perturbation_map=reciprocam_maps, reruns_head=True, aliases=("recipro-cam",), order=9,
)
