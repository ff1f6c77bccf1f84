"""Run a graph's 1-D convolutions as 2-D ones of height 1, which ONNX Runtime computes faster.

A Piper voice is almost all 1-D convolutions (the HiFi-GAN decoder, the
flow's WaveNet layers, the text encoder's feed-forward layers). ONNX
Runtime's CPU provider runs a 1-D Conv through im2col and a GEMM, but a 2-D
Conv through its blocked NCHWc kernels (and fuses the activation after it),
which on this project's 2-core reference machine takes 9-19% less time to
decode audio (two measurements, by window size) and about 10% less to encode
text, with the same numbers to within float rounding (docs/BENCHMARKS.md). So each Conv and ConvTranspose whose
weight is a 3-D initializer becomes

    Unsqueeze(axis 2) -> the same convolution in 2-D, kernel [1, k] -> Squeeze(axis 2)

and everything else in the graph stays as it is. The reshapes cost nothing
measurable (a decoder rewritten as one 2-D graph ran no faster). Each weight
is replaced by its reshaped self, so nothing is duplicated.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import onnx

_CONVOLUTIONS = frozenset({"Conv", "ConvTranspose"})
# Attributes with one value per spatial axis: the new height axis gets 1 (0 for pads).
_PER_AXIS = {"kernel_shape": 1, "strides": 1, "dilations": 1, "output_padding": 0, "output_shape": 1}
_AXIS = "speakstream_conv2d_axis"


def rewrite(model: onnx.ModelProto) -> int:
    """Rewrite `model`'s 1-D convolutions in place as 2-D ones; returns how many were rewritten.

    A convolution is left alone unless its weight is a 3-D initializer used by
    that node alone and not also a graph input a caller could override (a
    computed, shared or overridable weight keeps its 1-D form).
    """
    import onnx
    from onnx import helper, numpy_helper

    graph = model.graph
    overridable = {i.name for i in graph.input}
    weights = {init.name: init for init in graph.initializer if init.name not in overridable}
    users: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            users[name] = users.get(name, 0) + 1
    axes_as_input = _opset(model) >= 13  # Squeeze/Unsqueeze took axes as an attribute before
    nodes, done = [], 0
    for node in graph.node:
        weight = weights.get(node.input[1]) if node.op_type in _CONVOLUTIONS and len(node.input) > 1 else None
        if weight is None or len(weight.dims) != 3 or users[weight.name] != 1:
            nodes.append(node)
            continue
        array = numpy_helper.to_array(weight)
        weight.CopyFrom(numpy_helper.from_array(array.reshape(array.shape[0], array.shape[1], 1, array.shape[2]),
                                                weight.name))
        _widen_attributes(node)
        source, result = node.input[0], node.output[0]
        node.input[0], node.output[0] = f"{result}/conv2d_in", f"{result}/conv2d_out"
        nodes += [_reshape("Unsqueeze", source, node.input[0], f"{result}/conv2d_in", axes_as_input),
                  node,
                  _reshape("Squeeze", node.output[0], result, f"{result}/conv2d_out", axes_as_input)]
        done += 1
    if done:
        if axes_as_input:
            graph.initializer.append(helper.make_tensor(_AXIS, onnx.TensorProto.INT64, [1], [2]))
        del graph.node[:]
        graph.node.extend(nodes)
    return done


def _widen_attributes(node: onnx.NodeProto) -> None:
    """Give every per-axis attribute of a 1-D convolution a leading height axis."""
    for attribute in node.attribute:
        values = list(attribute.ints)
        if attribute.name in _PER_AXIS:
            del attribute.ints[:]
            attribute.ints.extend([_PER_AXIS[attribute.name], *values])
        elif attribute.name == "pads":  # [begin, end] -> [top, begin, bottom, end]
            del attribute.ints[:]
            attribute.ints.extend([0, values[0], 0, values[1]])


def _reshape(op: str, source: str, result: str, name: str, axes_as_input: bool) -> onnx.NodeProto:
    from onnx import helper

    if axes_as_input:
        return helper.make_node(op, [source, _AXIS], [result], name=name)
    return helper.make_node(op, [source], [result], name=name, axes=[2])


def _opset(model: onnx.ModelProto) -> int:
    return next((entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx")), 1)
