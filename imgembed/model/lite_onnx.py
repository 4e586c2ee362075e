"""The untrained EfficientNet-Lite0 embedding as an ONNX graph, built from the packaged weights
without torch, so that a base install (no torch) indexes and searches from an empty cache.

The graph is what :class:`~imgembed.model.network.EmbeddingModel` computes for a backbone by name:
trunk, global pooling, L2 norm. Batch norm is folded into the convolutions (as
:meth:`~imgembed.model.network.EmbeddingModel.fold_batchnorm` does), TensorFlow's "SAME" padding is
ONNX's ``auto_pad=SAME_UPPER`` (the extra pixel at the bottom and right) and ReLU6 is ``Clip``.
Preprocessing stays outside the graph, as with torch's export. On the sample images its
vectors match the torch model's at a worst cosine of 0.9999996 (tests/test_torchless.py).

Why build rather than ship a generated file: the weights already ship, in a package the
install pulls anyway, so a 13 MB binary in the repository would be a second copy to keep in
step; and the graph follows the model's own pooling (GeM or, for indexes built before it,
average), which one shipped file could not.
"""

from __future__ import annotations

import numpy as np

from ..errors import ModelError
from . import lite_arch

OPSET = 17
GEM_EPS = 1e-6  # model.pool clamps at this before the power
NORM_EPS = 1e-12  # as torch.nn.functional.normalize


def buildable(name: str, weights: str, head: dict | None = None) -> bool:
    """Whether :func:`build` makes this model: Lite0 by name, ImageNet weights, no head."""
    return name == "efficientnet_lite0" and weights == "imagenet" and not head


def build(pooling: str = "avg", weights_path: str | None = None):
    """An ``onnx.ModelProto`` mapping ``images`` (n, 3, H, W), preprocessed, to ``embeddings``
    (n, 1280), unit vectors. ``pooling`` is ``avg`` or ``gem:P`` (:func:`imgembed.config.parse_pooling`)."""
    from onnx import TensorProto, helper, numpy_helper

    from .torchfile import load

    state = lite_arch.convert_state_dict(load(weights_path or lite_arch.packaged_weights_path()))
    nodes, inits = [], []

    def const(name: str, value) -> str:
        inits.append(numpy_helper.from_array(np.asarray(value, dtype=np.float32), name))
        return name

    relu6 = (const("zero", 0.0), const("six", 6.0))

    def conv_bn(x: str, prefix: str, stride: int = 1, groups: int = 1, act: bool = True) -> str:
        """Conv (with the batch norm after it folded in), then ReLU6 unless ``act`` is False."""
        try:
            w = state[f"{prefix}.0.weight"]
            gamma, beta = state[f"{prefix}.1.weight"], state[f"{prefix}.1.bias"]
            mean, var = state[f"{prefix}.1.running_mean"], state[f"{prefix}.1.running_var"]
        except KeyError as e:
            raise ModelError(f"the Lite0 weights lack {e.args[0]}: not the packaged file?") from None
        scale = gamma / np.sqrt(var + lite_arch.BN_EPS)
        weight = const(f"{prefix}.w", w * scale.reshape(-1, 1, 1, 1))
        bias = const(f"{prefix}.b", beta - mean * scale)
        out = f"{prefix}.conv"
        nodes.append(helper.make_node("Conv", [x, weight, bias], [out], auto_pad="SAME_UPPER",
                                      kernel_shape=list(w.shape[2:]), strides=[stride, stride], group=groups))
        if not act:
            return out
        nodes.append(helper.make_node("Clip", [out, *relu6], [f"{prefix}.act"]))
        return f"{prefix}.act"

    x = conv_bn("images", "features.0", stride=2)
    for i, (cin, cout, _kernel, stride, expand) in enumerate(lite_arch.blocks(), start=1):
        block = f"features.{i}"
        y = conv_bn(x, f"{block}.expand") if expand != 1 else x
        y = conv_bn(y, f"{block}.depthwise", stride=stride, groups=cin * expand)
        y = conv_bn(y, f"{block}.project", act=False)
        if stride == 1 and cin == cout:
            nodes.append(helper.make_node("Add", [x, y], [f"{block}.out"]))
            y = f"{block}.out"
        x = y
    x = conv_bn(x, f"features.{len(lite_arch.blocks()) + 1}")
    x = _pool(nodes, const, x, pooling)
    nodes.append(helper.make_node("Flatten", [x], ["pooled"], axis=1))
    nodes.append(helper.make_node("ReduceL2", ["pooled"], ["norm"], axes=[1], keepdims=1))
    nodes.append(helper.make_node("Max", ["norm", const("norm_eps", NORM_EPS)], ["norm_safe"]))
    nodes.append(helper.make_node("Div", ["pooled", "norm_safe"], ["embeddings"]))

    graph = helper.make_graph(
        nodes, "imgembed_efficientnet_lite0",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["n", 3, "h", "w"])],
        [helper.make_tensor_value_info("embeddings", TensorProto.FLOAT, ["n", lite_arch.FEATURE_DIM])],
        inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="imgembed")
    model.ir_version = 8  # what ONNX Runtime and OpenVINO of the supported ranges all read
    return model


def _pool(nodes: list, const, x: str, pooling: str) -> str:
    from onnx import helper

    from ..config import parse_pooling

    p = parse_pooling(pooling)
    if p is None:
        nodes.append(helper.make_node("GlobalAveragePool", [x], ["pool"]))
        return "pool"
    nodes.append(helper.make_node("Max", [x, const("gem_eps", GEM_EPS)], ["gem.clamped"]))
    nodes.append(helper.make_node("Pow", ["gem.clamped", const("gem_p", p)], ["gem.pow"]))
    nodes.append(helper.make_node("GlobalAveragePool", ["gem.pow"], ["gem.mean"]))
    nodes.append(helper.make_node("Pow", ["gem.mean", const("gem_inv_p", 1.0 / p)], ["pool"]))
    return "pool"
