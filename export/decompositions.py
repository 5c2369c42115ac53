"""Decompositions that turn a traced gradient into plain forward ops ONNX has.

``make_fx(torch.func.grad(...))`` leaves backward ops (``convolution_backward``,
pooling backward) that no ONNX exporter translates. For the gradient with
respect to the *input* only (all the explanation needs) each is a forward op:

* ``convolution_backward`` -> a transposed convolution with the same weight
  (depthwise and grouped too), ``output_padding`` chosen to restore the input size; for 1x1
  kernels at stride 1 a plain 1x1 convolution with in/out channels swapped (engines compute that
  reliably, see :func:`_conv_input_grad`);
* ``_adaptive_avg_pool2d`` and its backward -> a mean / an expand divided by ``h*w`` (global
  pooling), or products with the constant pooling matrices (any other ratio; the core
  decomposition would fix the batch size);
* ``avg_pool2d_backward`` -> the same transposed convolution (padding counted);
* eval-mode batch norm and max-pool backward from ``torch._decomp``;
* ``empty_permuted`` with the identity layout -> ``empty``.
"""

from __future__ import annotations

import numpy as np
import torch
from torch._decomp import core_aten_decompositions, get_decompositions

aten = torch.ops.aten


def _conv_input_grad(grad_output, input, weight, bias_sizes, stride, padding, dilation, transposed,
                     output_padding, groups, output_mask):
    if transposed or output_mask[1] or output_mask[2]:
        return NotImplemented  # only the input gradient of a plain convolution is needed
    if all(k == 1 for k in weight.shape[2:]) and all(s == 1 for s in stride) and not any(padding):
        # A 1x1 convolution's input gradient is a 1x1 convolution with in/out channels swapped: emit
        # that (Conv), not a transposed one. OpenVINO 2026.4's CPU plugin computes a 1x1 ConvTranspose
        # followed by Expand (a 1x1 conv after global pooling: MobileNetV3's head) wrongly.
        out_channels, in_per_group = weight.shape[0], weight.shape[1]
        swapped = weight.reshape(groups, out_channels // groups, in_per_group, *weight.shape[2:]).transpose(1, 2)
        swapped = swapped.reshape(groups * in_per_group, out_channels // groups, *weight.shape[2:])
        ones = [1] * (input.dim() - 2)
        grad_input = aten.convolution(grad_output, swapped, None, ones, [0] * len(ones), ones, False,
                                      [0] * len(ones), groups)
        return grad_input, None, None
    pads = []
    for i in range(input.dim() - 2):
        covered = (grad_output.shape[2 + i] - 1) * stride[i] - 2 * padding[i] + dilation[i] * (weight.shape[2 + i] - 1) + 1
        pads.append(input.shape[2 + i] - covered)
    grad_input = aten.convolution(grad_output, weight, None, stride, padding, dilation, True, pads, groups)
    return grad_input, None, None


def _box_filter_transpose(grad_output, input, kernel, stride, padding, divisor):
    """Adjoint of a depthwise box filter: conv_transpose2d with a constant kernel."""
    channels = input.shape[1]
    weight = torch.full((channels, 1, kernel[0], kernel[1]), 1.0 / divisor, dtype=grad_output.dtype,
                        device=grad_output.device)
    pads = []
    for i in range(2):
        covered = (grad_output.shape[2 + i] - 1) * stride[i] - 2 * padding[i] + kernel[i]
        pads.append(input.shape[2 + i] - covered)
    return aten.convolution(grad_output, weight, None, list(stride), list(padding), [1, 1], True, pads, channels)


def _pool_matrix(out_size: int, in_size: int, dtype, device) -> torch.Tensor:
    """``(out, in)`` matrix of adaptive average pooling along one axis (PyTorch's bin edges)."""
    matrix = np.zeros((out_size, in_size), dtype=np.float64)  # NumPy: a constant, not traced ops
    for i in range(out_size):
        start, end = (i * in_size) // out_size, -((-(i + 1) * in_size) // out_size)
        matrix[i, start:end] = 1.0 / (end - start)
    return torch.tensor(matrix, dtype=dtype, device=device)


def _separable(x, p_h, p_w):
    """``p_h @ x @ p_w^T`` over the last two axes, as two linear maps (batch-size agnostic)."""
    along_w = torch.nn.functional.linear(x, p_w)
    return torch.nn.functional.linear(along_w.transpose(-1, -2), p_h).transpose(-1, -2)


def _adaptive_avg_pool2d(input, output_size):
    h, w = input.shape[-2], input.shape[-1]
    oh, ow = output_size
    if oh == 1 and ow == 1:
        return input.mean(dim=(-2, -1), keepdim=True)
    if oh == h and ow == w:
        return input.clone()
    # the core decomposition fixes the batch size for non-integer ratios; pooling matrices do not
    p_h = _pool_matrix(int(oh), int(h), input.dtype, input.device)
    p_w = _pool_matrix(int(ow), int(w), input.dtype, input.device)
    return _separable(input, p_h, p_w)


def _adaptive_avg_pool2d_backward(grad_output, input):
    h, w = input.shape[-2], input.shape[-1]
    oh, ow = grad_output.shape[-2], grad_output.shape[-1]
    if oh == 1 and ow == 1:
        return (grad_output / (h * w)).expand(input.shape)
    if oh == h and ow == w:
        return grad_output.clone()
    # any other ratio (VGG's 7x7 pooling of a smaller map): grad_in = P_h^T @ grad_out @ P_w
    p_h = _pool_matrix(int(oh), int(h), grad_output.dtype, grad_output.device)
    p_w = _pool_matrix(int(ow), int(w), grad_output.dtype, grad_output.device)
    return _separable(grad_output, p_h.t(), p_w.t())


def _avg_pool2d_backward(grad_output, input, kernel_size, stride, padding, ceil_mode, count_include_pad,
                         divisor_override):
    kernel = tuple(kernel_size) * (2 // len(kernel_size))
    stride = tuple(stride) * (2 // len(stride)) if stride else kernel
    padding = tuple(padding) * (2 // len(padding))
    if ceil_mode or (any(padding) and not count_include_pad):
        return NotImplemented  # varying divisors at the border
    divisor = divisor_override or kernel[0] * kernel[1]
    return _box_filter_transpose(grad_output, input, kernel, stride, padding, divisor)


def gradient_decompositions() -> dict:
    """The table for ``make_fx(..., decomposition_table=...)``: core ATen plus the rules above."""
    table = dict(core_aten_decompositions())
    table.update(get_decompositions([aten._native_batch_norm_legit_no_training, aten.max_pool2d_with_indices_backward]))
    table[aten.convolution_backward.default] = _conv_input_grad
    table[aten._adaptive_avg_pool2d.default] = _adaptive_avg_pool2d
    table[aten._adaptive_avg_pool2d_backward.default] = _adaptive_avg_pool2d_backward
    table[aten.avg_pool2d_backward.default] = _avg_pool2d_backward
    table[aten.empty_permuted.default] = _empty_permuted
    return table


def _empty_permuted(size, physical_layout, dtype=None, layout=None, device=None, pin_memory=None):
    """``empty_permuted`` (which ONNX lacks; a gradient's ``ones_like`` of a sliced map makes one, e.g. YOLO's
    class branch) as a plain ``empty`` when its layout is the identity: only the values written later count."""
    if list(physical_layout) != list(range(len(size))):
        return NotImplemented
    return aten.empty.memory_format(size, dtype=dtype, layout=layout, device=device, pin_memory=pin_memory)
