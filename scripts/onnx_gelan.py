"""Builds a GELAN / YOLOv9 inference graph as ONNX, with random weights, from one of the
official manifests in tests/fixtures/yolov9/manifests/ (layer list, resolved arguments, head).

Used by bench-vs-onnxruntime.py to time ONNX Runtime on architectures for which no official
ONNX export is at hand, at any input size. The graph follows the official modules with
BatchNorm already folded into each convolution (as the official exporter emits it): Conv(+bias)
then x * Sigmoid(x), AveragePool, MaxPool, Split, Concat, Resize (nearest), Add, and the
DDetect decode (DFL softmax, anchors, strides). Speed does not depend on the weight values.

    python3 scripts/onnx_gelan.py gelan-c 640 out.onnx
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parent.parent
MANIFESTS = ROOT / "tests" / "fixtures" / "yolov9" / "manifests"
REG_MAX = 16


class Graph:
    def __init__(self, seed: int = 0):
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.n = 0
        self.params = 0
        self.rng = np.random.default_rng(seed)

    def name(self, prefix: str) -> str:
        self.n += 1
        return f"{prefix}_{self.n}"

    def const(self, value: np.ndarray, prefix: str = "c") -> str:
        name = self.name(prefix)
        self.inits.append(numpy_helper.from_array(value, name))
        return name

    def op(self, op_type: str, inputs: list[str], n_out: int = 1, **attrs) -> list[str]:
        outs = [self.name(op_type.lower()) for _ in range(n_out)]
        self.nodes.append(helper.make_node(op_type, inputs, outs, **attrs))
        return outs

    def conv(self, x: str, c1: int, c2: int, k: int, s: int = 1, p: int | None = None, g: int = 1,
             act: bool = True) -> str:
        """Conv2d with bias (BN folded), then SiLU when `act`."""
        p = k // 2 if p is None else p
        fan_in = c1 // g * k * k
        w = (self.rng.standard_normal((c2, c1 // g, k, k)) * (1.0 / np.sqrt(fan_in))).astype(np.float32)
        b = (self.rng.standard_normal(c2) * 0.1).astype(np.float32)
        self.params += w.size + b.size
        (y,) = self.op("Conv", [x, self.const(w, "w"), self.const(b, "b")], kernel_shape=[k, k],
                       strides=[s, s], pads=[p, p, p, p], group=g, dilations=[1, 1])
        return self.silu(y) if act else y

    def silu(self, x: str) -> str:
        (s,) = self.op("Sigmoid", [x])
        return self.op("Mul", [x, s])[0]

    def split(self, x: str, sizes: list[int]) -> list[str]:
        return self.op("Split", [x, self.const(np.array(sizes, np.int64), "split")], n_out=len(sizes), axis=1)

    def cat(self, xs: list[str], axis: int = 1) -> str:
        return self.op("Concat", xs, axis=axis)[0]

    def add(self, a: str, b: str) -> str:
        return self.op("Add", [a, b])[0]

    def avg_pool(self, x: str) -> str:
        return self.op("AveragePool", [x], kernel_shape=[2, 2], strides=[1, 1], pads=[0, 0, 0, 0])[0]

    def max_pool(self, x: str, k: int, s: int, p: int) -> str:
        return self.op("MaxPool", [x], kernel_shape=[k, k], strides=[s, s], pads=[p, p, p, p])[0]

    def resize(self, x: str, size: tuple[int, int], channels: int) -> str:
        sizes = self.const(np.array([1, channels, size[0], size[1]], np.int64), "sizes")
        return self.op("Resize", [x, "", "", sizes], mode="nearest", coordinate_transformation_mode="asymmetric",
                       nearest_mode="floor")[0]


# The official modules (models/common.py), in inference form.

def rep_ncsp(g: Graph, x: str, c1: int, c2: int, n: int) -> str:
    c_ = int(c2 * 0.5)
    a = g.conv(x, c1, c_, 1)
    for _ in range(n):  # RepNBottleneck(c_, c_, shortcut=True, e=1.0): RepConvN (fused 3x3) + Conv 3x3 + add
        a = g.add(a, g.conv(g.conv(a, c_, c_, 3), c_, c_, 3))
    b = g.conv(x, c1, c_, 1)
    return g.conv(g.cat([a, b]), 2 * c_, c2, 1)


def elan(g: Graph, x: str, c1: int, c2: int, c3: int, c4: int, n: int | None) -> str:
    """RepNCSPELAN4 (n repeats in its RepNCSPs) or ELAN1 (n is None)."""
    y = g.conv(x, c1, c3, 1)
    a, b = g.split(y, [c3 // 2, c3 - c3 // 2])
    if n is None:
        c = g.conv(b, c3 // 2, c4, 3)
        d = g.conv(c, c4, c4, 3)
    else:
        c = g.conv(rep_ncsp(g, b, c3 // 2, c4, n), c4, c4, 3)
        d = g.conv(rep_ncsp(g, c, c4, c4, n), c4, c4, 3)
    return g.conv(g.cat([a, b, c, d]), c3 + 2 * c4, c2, 1)


def adown(g: Graph, x: str, c1: int, c2: int) -> str:
    c = c2 // 2
    x = g.avg_pool(x)
    x1, x2 = g.split(x, [c1 // 2, c1 - c1 // 2])
    x1 = g.conv(x1, c1 // 2, c, 3, 2, 1)
    x2 = g.conv(g.max_pool(x2, 3, 2, 1), c1 // 2, c, 1, 1, 0)
    return g.cat([x1, x2])


def sppelan(g: Graph, x: str, c1: int, c2: int, c3: int) -> str:
    y = [g.conv(x, c1, c3, 1)]
    for _ in range(3):
        y.append(g.max_pool(y[-1], 5, 1, 2))
    return g.conv(g.cat(y), 4 * c3, c2, 1)


def head(g: Graph, xs: list[str], chs: list[int], sizes: list[tuple[int, int]], branch: dict, nc: int,
         strides: list[int]) -> str:
    """The inference branch of DDetect / DualDDetect, decoded like the official `forward`."""
    c2, c3, groups = branch["box_hidden"], branch["cls_hidden"], branch["box_groups"]
    flat = []
    total = sum(h * w for h, w in sizes)
    for x, ch, (h, w) in zip(xs, chs, sizes):
        bx = g.conv(g.conv(g.conv(x, ch, c2, 3), c2, c2, 3, g=groups), c2, 4 * REG_MAX, 1, g=branch["box_out_groups"],
                    act=False)
        cl = g.conv(g.conv(g.conv(x, ch, c3, 3), c3, c3, 3), c3, nc, 1, act=False)
        y = g.cat([bx, cl])
        flat.append(g.op("Reshape", [y, g.const(np.array([1, 4 * REG_MAX + nc, -1], np.int64), "shape")])[0])
    y = g.cat(flat, axis=2)
    box, cls = g.split(y, [4 * REG_MAX, nc])
    # DFL: softmax over 16 bins, projection with the 0..15 weights (a 1x1 conv in the official model).
    box = g.op("Reshape", [box, g.const(np.array([1, 4, REG_MAX, total], np.int64), "shape")])[0]
    box = g.op("Transpose", [box], perm=[0, 2, 1, 3])[0]
    box = g.op("Softmax", [box], axis=1)[0]
    proj = np.arange(REG_MAX, dtype=np.float32).reshape(1, REG_MAX, 1, 1)
    g.params += proj.size
    dist = g.op("Conv", [box, g.const(proj, "dfl")], kernel_shape=[1, 1])[0]
    dist = g.op("Reshape", [dist, g.const(np.array([1, 4, total], np.int64), "shape")])[0]
    anchors, stride_t = [], []
    for (h, w), s in zip(sizes, strides):
        sx, sy = np.meshgrid(np.arange(w, dtype=np.float32) + 0.5, np.arange(h, dtype=np.float32) + 0.5)
        anchors.append(np.stack([sx.ravel(), sy.ravel()]))
        stride_t.append(np.full((1, h * w), s, np.float32))
    anchors_c = g.const(np.concatenate(anchors, axis=1)[None], "anchors")
    lt, rb = g.split(dist, [2, 2])
    x1y1 = g.op("Sub", [anchors_c, lt])[0]
    x2y2 = g.add(anchors_c, rb)
    c_xy = g.op("Div", [g.add(x1y1, x2y2), g.const(np.array(2.0, np.float32), "two")])[0]
    wh = g.op("Sub", [x2y2, x1y1])[0]
    dbox = g.op("Mul", [g.cat([c_xy, wh]), g.const(np.concatenate(stride_t, axis=1)[None], "strides")])[0]
    return g.cat([dbox, g.op("Sigmoid", [cls])[0]])


def build(model: str, imgsz: int, seed: int = 0) -> tuple[onnx.ModelProto, int]:
    """The ONNX model of `model`'s inference path at imgsz x imgsz, and its parameter count."""
    manifest = json.loads((MANIFESTS / f"{model}.json").read_text())
    layers = {l["index"]: l for l in manifest["layers"]}
    keep = set(manifest["inference_layers"])
    g = Graph(seed)
    outs: dict[int, object] = {}
    chans: dict[int, object] = {}
    spatial: dict[int, tuple[int, int]] = {}

    def inp(f: int | None):
        return ("images", 3, (imgsz, imgsz)) if f is None else (outs[f], chans[f], spatial[f])

    for idx in sorted(keep):
        layer = layers[idx]
        frm = layer["from"] if isinstance(layer["from"], list) else [layer["from"]]
        # Official wiring: negative = relative to this layer, and before layer 0 is the image.
        frm = [f if f >= 0 else (idx + f if idx + f >= 0 else None) for f in frm]
        mod, args, n = layer["module"], layer["args_resolved"], layer["repeats"]
        x, c, (h, w) = inp(frm[0]) if len(frm) == 1 else (None, 0, (0, 0))
        if mod == "Silence":
            y, c2, hw = x, c, (h, w)
        elif mod == "Conv":
            k = args[2] if len(args) > 2 else 1
            s = args[3] if len(args) > 3 else 1
            y = g.conv(x, args[0], args[1], k, s)
            c2, hw = args[1], ((h + 2 * (k // 2) - k) // s + 1, (w + 2 * (k // 2) - k) // s + 1)
        elif mod == "AConv":
            y = g.conv(g.avg_pool(x), args[0], args[1], 3, 2, 1)
            c2, hw = args[1], (h // 2, w // 2)
        elif mod == "ADown":
            y, c2, hw = adown(g, x, args[0], args[1]), args[1], (h // 2, w // 2)
        elif mod in ("RepNCSPELAN4", "ELAN1"):
            y = x
            for _ in range(n):
                y = elan(g, y, *args[:4], n=(args[4] if len(args) > 4 else 1) if mod == "RepNCSPELAN4" else None)
            c2, hw = args[1], (h, w)
        elif mod == "SPPELAN":
            y, c2, hw = sppelan(g, x, *args[:3]), args[1], (h, w)
        elif mod == "nn.Upsample":
            y = g.resize(x, (h * 2, w * 2), c)
            c2, hw = c, (h * 2, w * 2)
        elif mod == "Concat":
            parts = [inp(f) for f in frm]
            y, c2, hw = g.cat([p[0] for p in parts]), sum(p[1] for p in parts), parts[0][2]
        elif mod == "CBLinear":
            c2s = args[1]
            y = g.split(g.conv(x, args[0], sum(c2s), 1, act=False), c2s)
            c2, hw = c2s, (h, w)
        elif mod == "CBFuse":
            parts = [inp(f) for f in frm]
            last, c2, hw = parts[-1]
            y = last
            for (splits, chs, size), i in zip(parts[:-1], args[0]):
                s = splits[i]
                if size != hw:
                    s = g.resize(s, hw, chs[i])
                y = g.add(s, y)
        elif mod in ("DDetect", "DualDDetect", "TripleDDetect"):
            hd = manifest["head"]
            nl, b = hd["nl"], hd["inference_branch"]
            srcs = [inp(f) for f in frm[b * nl:(b + 1) * nl]]
            strides = [int(s) for s in hd["strides"]]
            n_anchors = sum(p[2][0] * p[2][1] for p in srcs)
            out = head(g, [p[0] for p in srcs], [p[1] for p in srcs], [p[2] for p in srcs], hd["branches"][b],
                       hd["nc"], strides)
            graph = helper.make_graph(
                g.nodes, model,
                [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, imgsz, imgsz])],
                [helper.make_tensor_value_info(out, TensorProto.FLOAT, [1, 4 + hd["nc"], n_anchors])], g.inits)
            m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
            m.ir_version = 8
            onnx.checker.check_model(m)
            return m, g.params
        else:
            raise ValueError(f"{model}: layer {idx}: module {mod} not supported")
        outs[idx], chans[idx], spatial[idx] = y, c2, hw
    raise ValueError(f"{model}: no detection head")


if __name__ == "__main__":
    name, size, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    m, params = build(name, size)
    onnx.save(m, path)
    print(f"{name} @ {size}: {params} parameters -> {path}")
