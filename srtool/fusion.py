"""CPU inference fusion: conv + activation pairs into single oneDNN calls, found with torch.fx.

Why: on the CPU every separate activation is one more pass over a feature map; fusing them into the
convolution's post-op saves that pass and an allocation per layer with bit-identical results.
"""

from __future__ import annotations

import torch
from torch import nn

from .devices import NET_DTYPES


def prepare_network(network: nn.Module, device: torch.device, precision: str) -> nn.Module:
    """Inference-ready network: eval mode, no grads, on ``device`` in ``precision``, channels_last;
    on the CPU, convolutions followed by LeakyReLU/ReLU run as one fused oneDNN call (srtool's own
    architectures only: tracing a foreign module can fail half-way and leave it unusable)."""
    network = network.eval().requires_grad_(False).to(device=device, dtype=NET_DTYPES[precision])
    if device.type in ("cpu", "cuda"):
        network = network.to(memory_format=torch.channels_last)
    if device.type == "cpu" and is_srtool_network(network):
        network = fuse_conv_activations(network)
    return network


def is_srtool_network(network: nn.Module) -> bool:
    """True when every module of ``network`` is srtool's own or torch's (nothing from spandrel etc.)."""
    return all(type(m).__module__.startswith(("srtool.", "torch.")) for m in network.modules())


def _fuse_scaled_residuals(graph_module) -> int:
    """Rewrite ``x + c * y`` (c a Python number) into ``torch.add(x, y, alpha=c)``: one pass, not two."""
    import operator

    count = 0
    for node in list(graph_module.graph.nodes):
        if node.op != "call_function" or node.target is not operator.add or len(node.args) != 2:
            continue
        for i in (0, 1):
            mul, other = node.args[i], node.args[1 - i]
            if getattr(mul, "op", None) != "call_function" or mul.target is not operator.mul or len(mul.users) != 1:
                continue
            scalars = [a for a in mul.args if isinstance(a, (int, float))]
            tensors = [a for a in mul.args if not isinstance(a, (int, float))]
            if len(scalars) != 1 or len(tensors) != 1 or isinstance(other, (int, float)):
                continue
            with graph_module.graph.inserting_after(node):
                replacement = graph_module.graph.call_function(torch.add, (other, tensors[0]), {"alpha": scalars[0]})
            node.replace_all_uses_with(replacement)
            graph_module.graph.erase_node(node)
            graph_module.graph.erase_node(mul)
            count += 1
            break
    return count


class _FusedConvActivation(nn.Module):
    """A Conv2d and the activation after it as one oneDNN convolution with a post-op.

    Shares the convolution's parameters. The activation is applied to the accumulator before the
    result is written, which saves one pass over the feature map and one allocation per layer;
    results are identical to the two-step eager computation.
    """

    def __init__(self, conv: nn.Conv2d, attr: str, scalars: list[float], prelu: nn.PReLU | None = None):
        super().__init__()
        # held outside the module tree: the conv (and PReLU) stay registered under their own names in the
        # traced network, so state_dict() keeps exactly the original keys (train's --init-from reads them)
        self._conv = (conv,)
        self._prelu = (prelu,)
        self.attr, self.scalars = attr, scalars
        self.shuffle = 0  # > 0: a PixelShuffle of this factor follows, done by _sub_pixel_rows
        self._order: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c, prelu = self._conv[0], self._prelu[0]
        # a one-parameter PReLU is a LeakyReLU whose slope is a weight: read it now, never a stale copy
        scalars = [float(prelu.weight)] if prelu is not None else self.scalars
        weight, bias = c.weight, c.bias
        if self.shuffle:  # output channels in (row offset, column offset, channel) order, see _sub_pixel_rows
            if self._order is None or self._order.device != weight.device:
                self._order = sub_pixel_channel_order(weight.shape[0], self.shuffle, weight.device)
            # re-read on every call (a few hundred KB): weights updated in place are never stale
            weight = weight.index_select(0, self._order)
            bias = bias.index_select(0, self._order) if bias is not None else None
        y = torch.ops.mkldnn._convolution_pointwise(
            x, weight, bias, list(c.padding), list(c.stride), list(c.dilation), c.groups,
            self.attr, scalars, "",
        )
        return _sub_pixel_rows(y, self.shuffle) if self.shuffle else y


def sub_pixel_channel_order(channels: int, factor: int, device=None) -> torch.Tensor:
    """Output-channel permutation that puts PixelShuffle's channel ``c * r * r + i * r + j`` at
    ``(i * r + j) * C + c`` (C = channels / r², i/j the row/column offset inside each r x r block)."""
    c_out = channels // (factor * factor)
    order = torch.arange(channels, device=device).view(c_out, factor, factor).permute(1, 2, 0)
    return order.reshape(-1)


def _sub_pixel_rows(y: torch.Tensor, factor: int) -> torch.Tensor:
    """PixelShuffle of a convolution output whose channels are in :func:`sub_pixel_channel_order`.

    Why: in channels_last memory, PixelShuffle's usual channel order scatters every output pixel's
    channels with a stride of r² (``aten::pixel_shuffle`` moved 270 MB in 90-100 ms on the 2-core
    machine); in this order each input pixel holds, per row offset i, the r adjacent output pixels'
    channels as one contiguous run of r * C values, so the shuffle is a copy of long runs (26 ms).
    Returns an NCHW-shaped tensor in channels_last memory with the values of ``pixel_shuffle``.
    """
    n, channels, h, w = y.shape
    r, c_out = factor, channels // (factor * factor)
    runs = y.permute(0, 2, 3, 1).reshape(n, h, w, r, r * c_out)  # a view when y is channels_last
    out = torch.empty((n, h, r, w, r * c_out), dtype=y.dtype, device=y.device)
    out.copy_(runs.permute(0, 1, 3, 2, 4))
    return out.view(n, h * r, w * r, c_out).permute(0, 3, 1, 2)


class _FusedConvAdd(nn.Module):
    """``other + conv(x)`` as one oneDNN convolution with a binary-add post-op (a residual connection):
    the sum is formed as the output is written, saving one pass over the feature map and one allocation.
    In fp32 the result equals the eager sum up to oneDNN's choice of accumulation order for the fused
    primitive (at most one ulp seen; bit-identical on SRResNet)."""

    def __init__(self, conv: nn.Conv2d, scale: float = 1.0):
        super().__init__()
        self._conv = (conv,)  # outside the module tree, as in _FusedConvActivation
        # ``other + scale * conv(x)`` (ESRGAN's 0.2-scaled dense-block residual): the scale is folded
        # into the weights and bias on every call (never a stale copy), so the sum is still one call
        self.scale = scale

    def forward(self, x: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        c = self._conv[0]
        if other.dtype != x.dtype:
            return torch.add(other, c(x), alpha=self.scale)
        weight, bias = c.weight, c.bias
        if self.scale != 1.0:
            weight = weight * self.scale
            bias = bias * self.scale if bias is not None else None
        try:
            return torch.ops.mkldnn._convolution_pointwise.binary(
                x, other, weight, bias, list(c.padding), list(c.stride), list(c.dilation), c.groups,
                "add", None, None, [], None,
            )
        except RuntimeError:  # shapes that need broadcasting etc.: the eager sum
            return torch.add(other, c(x), alpha=self.scale)


def _fuse_conv_adds(graph_module, modules: dict) -> int:
    """Rewrite ``a + conv(x)`` / ``conv(x) + a`` / ``torch.add(a, conv(x), alpha=c)`` (conv used only
    there) into :class:`_FusedConvAdd`."""
    import operator

    count = 0
    for node in list(graph_module.graph.nodes):
        if node.op != "call_function" or node.target not in (operator.add, torch.add) or len(node.args) != 2:
            continue
        scale = node.kwargs.get("alpha", 1.0) if node.target is torch.add else 1.0
        if set(node.kwargs) - ({"alpha"} if node.target is torch.add else set()) \
                or not isinstance(scale, (int, float)):
            continue
        for i in ((0, 1) if scale == 1.0 else (1,)):  # alpha scales the second operand only
            producer, other = node.args[i], node.args[1 - i]
            conv = _fusable_conv(producer, modules)
            if conv is None or not isinstance(other, torch.fx.Node) or other is producer:
                continue
            name = f"_fused_add_{count}"
            graph_module.add_submodule(name, _FusedConvAdd(conv, float(scale)))
            with graph_module.graph.inserting_after(node):
                replacement = graph_module.graph.call_module(name, (producer.args[0], other))
            node.replace_all_uses_with(replacement)
            for gone in (node, producer):
                graph_module.graph.erase_node(gone)
            count += 1
            break
    return count


def _fusable_conv(node, modules: dict) -> nn.Conv2d | None:
    """The Conv2d a graph node calls, if oneDNN can fuse it and nothing else uses its output."""
    conv = modules.get(node.target) if getattr(node, "op", None) == "call_module" else None
    if not isinstance(conv, nn.Conv2d) or len(node.users) != 1 or conv.padding_mode != "zeros" \
            or isinstance(conv.padding, str):
        return None
    return conv


def _drop_identities(graph_module, modules: dict) -> int:
    """Remove ``nn.Identity`` calls (e.g. a disabled BatchNorm) so that conv -> activation pairs meet."""
    count = 0
    for node in list(graph_module.graph.nodes):
        if node.op == "call_module" and isinstance(modules.get(node.target), nn.Identity) and len(node.args) == 1:
            node.replace_all_uses_with(node.args[0])
            graph_module.graph.erase_node(node)
            count += 1
    return count


def _is_pixel_shuffle(node, modules: dict) -> bool:
    import torch.nn.functional as F

    if getattr(node, "op", None) == "call_module":
        return isinstance(modules.get(node.target), nn.PixelShuffle)
    return getattr(node, "op", None) == "call_function" and node.target in (F.pixel_shuffle, torch.pixel_shuffle)


def _shuffle_factor(node, modules: dict) -> int:
    """The upscale factor of a PixelShuffle node, 0 if it is not one or the factor is not a constant."""
    if not _is_pixel_shuffle(node, modules):
        return 0
    if node.op == "call_module":
        return int(modules[node.target].upscale_factor)
    factor = node.args[1] if len(node.args) > 1 else node.kwargs.get("upscale_factor")
    return factor if isinstance(factor, int) else 0


def _fuse_pixel_shuffles(graph_module, modules: dict) -> int:
    """Let the convolution before each PixelShuffle emit its channels in the order that makes the
    shuffle a copy of contiguous runs (:func:`_sub_pixel_rows`). Same values, a third of the time."""
    count = 0
    for node in list(graph_module.graph.nodes):
        factor = _shuffle_factor(node, modules)
        producer = node.args[0] if node.args else None
        if factor < 2 or getattr(producer, "op", None) != "call_module" or len(producer.users) != 1:
            continue
        fused_conv = graph_module.get_submodule(producer.target)
        if isinstance(fused_conv, nn.Conv2d):
            if _fusable_conv(producer, modules) is None:
                continue
            name = f"_fused_shuffle_{count}"
            graph_module.add_submodule(name, _FusedConvActivation(fused_conv, "none", []))
            producer.target = name
            fused_conv = graph_module.get_submodule(name)
        if not isinstance(fused_conv, _FusedConvActivation) or fused_conv.shuffle \
                or fused_conv._conv[0].out_channels % (factor * factor):
            continue
        fused_conv.shuffle = factor
        node.replace_all_uses_with(producer)
        graph_module.graph.erase_node(node)
        count += 1
    return count


def fuse_conv_activations(network: nn.Module) -> nn.Module:
    """Rewrite conv -> leaky_relu/relu/PReLU pairs into fused oneDNN calls (CPU inference only).

    A one-parameter PReLU is a LeakyReLU with a learned slope; after a PixelShuffle it is moved before
    the shuffle (a scalar activation commutes with a permutation), so SRResNet's upsampling fuses too.

    Uses torch.fx to find the pairs, so no architecture is special-cased. Returns ``network``
    unchanged when it cannot be traced, oneDNN is unavailable, or nothing is fusable.
    """
    import torch.fx
    import torch.nn.functional as F

    if not (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise")):
        return network
    try:
        graph_module = torch.fx.symbolic_trace(network)
    except Exception:  # noqa: BLE001 -- data-dependent control flow etc.: keep the eager network
        return network
    modules = dict(graph_module.named_modules())
    fused = _drop_identities(graph_module, modules)
    for node in list(graph_module.graph.nodes):
        attr, scalars, prelu = None, [], None
        if node.op == "call_function" and node.target in (F.leaky_relu, torch.nn.functional.leaky_relu):
            slope = node.args[1] if len(node.args) > 1 else node.kwargs.get("negative_slope", 0.01)
            attr, scalars = "leaky_relu", [float(slope)]
        elif node.op == "call_function" and node.target in (F.relu, torch.relu):
            attr = "relu"
        elif node.op == "call_module" and isinstance(modules.get(node.target), nn.LeakyReLU):
            attr, scalars = "leaky_relu", [float(modules[node.target].negative_slope)]
        elif node.op == "call_module" and isinstance(modules.get(node.target), nn.ReLU):
            attr = "relu"
        elif node.op == "call_module" and isinstance(modules.get(node.target), nn.PReLU) \
                and modules[node.target].num_parameters == 1:
            attr, scalars, prelu = "leaky_relu", [0.0], modules[node.target]
        if attr is None or not node.args:
            continue
        producer = node.args[0]
        shuffle = None
        if prelu is not None and _is_pixel_shuffle(producer, modules) and len(producer.users) == 1:
            # a scalar activation commutes with PixelShuffle (a permutation): conv+act, then shuffle
            shuffle, producer = producer, producer.args[0]
        conv = _fusable_conv(producer, modules)
        if conv is None:
            continue
        name = f"_fused_{fused}"
        graph_module.add_submodule(name, _FusedConvActivation(conv, attr, scalars, prelu))
        with graph_module.graph.inserting_after(producer):
            replacement = graph_module.graph.call_module(name, (producer.args[0],))
        if shuffle is not None:
            shuffle.replace_input_with(producer, replacement)
            node.replace_all_uses_with(shuffle)
        else:
            node.replace_all_uses_with(replacement)
        graph_module.graph.erase_node(node)
        graph_module.graph.erase_node(producer)
        fused += 1
    fused += _fuse_scaled_residuals(graph_module)
    fused += _fuse_conv_adds(graph_module, modules)
    fused += _fuse_pixel_shuffles(graph_module, modules)
    if not fused:
        return network
    graph_module.graph.lint()
    graph_module.recompile()
    graph_module.config = getattr(network, "config", None)
    graph_module.scale = getattr(network, "scale", None)
    return graph_module
