"""Exact rewrites of an exported u8 INT8 QDQ graph, for ONNX Runtime's x86 kernels.

The float-model rewrites (:mod:`._fold`) cannot say everything ORT needs: some speed-ups only
exist as integer-domain graph edits. Each rewrite here leaves the integer computation unchanged
(tests check bit-identical ORT outputs) and applies only to uint8-activation graphs; the
symmetric int8 graphs for TensorRT keep the plain Q -> DQ pairs its parser expects.
docs/quantization.md has the measurements behind each one.
"""

from __future__ import annotations

from functools import cached_property

import numpy as np

__all__ = ["consumers", "quantize_before_pad", "pack_stem_columns", "pad_output_channels", "float_out_conv_as_matmul",
           "shrink_repeated_constants", "ORT_REWRITES"]


def consumers(graph) -> dict[str, list]:
    """``{tensor name: nodes reading it}`` of an ONNX graph."""
    out: dict[str, list] = {}
    for n in graph.node:
        for i in n.input:
            out.setdefault(i, []).append(n)
    return out


def _input(node, i: int) -> str | None:
    """Name of ``node``'s ``i``-th input, None when it is absent or empty (an omitted optional input)."""
    return node.input[i] if len(node.input) > i and node.input[i] else None


def _attrs(node) -> dict:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _conv_like(node, kernel, stride, pads) -> bool:
    a = _attrs(node)
    return (list(a.get("kernel_shape", [])) == kernel and list(a.get("strides", [1, 1])) == stride
            and list(a.get("pads", [0, 0, 0, 0])) == pads and list(a.get("dilations", [1, 1])) == [1, 1]
            and a.get("group", 1) == 1 and a.get("ceil_mode", 0) == 0 and a.get("storage_order", 0) == 0
            and a.get("auto_pad", b"NOTSET") in (b"NOTSET", "NOTSET"))


class _Graph:
    """Lookups over one ONNX graph that rewrites share."""

    def __init__(self, model) -> None:
        self.model, self.g = model, model.graph
        self._index()

    def _index(self) -> None:
        self.inits = {i.name: i for i in self.g.initializer}
        self.producer = {o: n for n in self.g.node for o in n.output}
        self.users = consumers(self.g)
        self.__dict__.pop("shapes", None)

    @cached_property
    def shapes(self) -> dict[str, list]:
        """Static shapes from value_info / graph inputs / outputs (None for a symbolic dim)."""
        return {v.name: [d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim]
                for v in list(self.g.value_info) + list(self.g.input) + list(self.g.output)}

    def const(self, name: str | None):
        from onnx import numpy_helper

        return numpy_helper.to_array(self.inits[name]) if name in self.inits else None

    def made_by(self, name: str, op: str):
        n = self.producer.get(name)
        return n if n is not None and n.op_type == op else None

    def only_user(self, name: str, op: str):
        u = self.users.get(name, [])
        return u[0] if len(u) == 1 and u[0].op_type == op else None

    def is_u8_activation_q(self, node) -> bool:
        """A per-tensor Quantize/DequantizeLinear with a uint8 zero point initializer."""
        import onnx

        zp = _input(node, 2)
        if zp not in self.inits or node.input[1] not in self.inits:
            return False
        return self.inits[zp].data_type == onnx.TensorProto.UINT8 and self.const(node.input[1]).size == 1

    def int8_weight(self, dq_w, *, per_tensor_ok: bool = False):
        """``(w, scale, zp or None)`` of a DequantizeLinear over a constant int8 conv weight ``[O, ...]``
        with one scale per output channel (axis 0; a per-tensor scale is repeated to ``[O]`` when
        ``per_tensor_ok``), else None."""
        w, scale, zp = self.const(dq_w.input[0]), self.const(dq_w.input[1]), self.const(_input(dq_w, 2))
        if w is None or w.dtype != np.int8 or scale is None or (_input(dq_w, 2) and zp is None):
            return None
        if per_tensor_ok and scale.size == 1:
            return w, np.full(w.shape[0], scale.item(), scale.dtype), zp
        if scale.shape != (w.shape[0],) or _attrs(dq_w).get("axis", 1) != 0:
            return None
        return w, scale, zp

    def const_bias(self, conv) -> tuple[bool, np.ndarray | None]:
        """``(True, bias or None when there is none)``; ``(False, None)`` for a computed bias (e.g. a
        dequantized int32 one), which rewrites leave alone."""
        name = _input(conv, 2)
        b = self.const(name)
        return (name is None or b is not None), b

    def same_qparams(self, a, b) -> bool:
        return all(np.array_equal(self.const(x), self.const(y)) for x, y in zip(a.input[1:3], b.input[1:3]))

    def add_init(self, array: np.ndarray, name: str) -> str:
        from onnx import numpy_helper

        self.g.initializer.append(numpy_helper.from_array(array, name))
        return name

    def feeds_float_only(self, name: str) -> bool:
        """No QuantizeLinear reads ``name`` or the outputs of the nodes reading it."""
        for u in self.users.get(name, []):
            if u.op_type == "QuantizeLinear" or any(uu.op_type == "QuantizeLinear"
                                                    for o in u.output for uu in self.users.get(o, [])):
                return False
        return True

    def rebuild(self, removed: list = (), insert_before: dict | None = None) -> None:
        """Drop ``removed`` nodes and put ``insert_before[id(node)]`` (lists of new nodes) before
        ``node``; forget the value_info of tensors that no longer exist, drop unused initializers and
        re-index. The graph's node list is copied (protobuf), so node objects looked up before are stale."""
        gone = {id(n) for n in removed}
        before = insert_before or {}
        nodes = []
        for n in self.g.node:
            nodes.extend(before.get(id(n), ()))
            if id(n) not in gone:
                nodes.append(n)
        del self.g.node[:]
        self.g.node.extend(nodes)
        live = {t for n in self.g.node for t in list(n.input) + list(n.output)}
        live |= {o.name for o in self.g.output}
        for v in [v for v in self.g.value_info if v.name not in live]:
            self.g.value_info.remove(v)
        for i in [i for i in self.g.initializer if i.name not in live]:
            self.g.initializer.remove(i)
        self._index()

    def replace(self, removed: list, new_nodes: list, anchor) -> None:
        """Drop ``removed`` nodes and put ``new_nodes`` where ``anchor`` (one of them) was."""
        self.rebuild(removed, {id(anchor): new_nodes})


def quantize_before_pad(model) -> int:
    """Rewrite ``Pad(x, value 0) -> QuantizeLinear`` as ``QuantizeLinear(x) -> Pad(value = zero point)``.

    Exact (quantization is elementwise and maps 0 to the zero point). The padded stem input
    (``_fold.PaddedStemConv``) is then padded as uint8 instead of float: 4x fewer bytes, and ONNX
    Runtime's Pad of the full-resolution float input took ~1 ms of a ~20 ms 0.25x model (2 threads).
    Returns the number of rewrites.
    """
    G = _Graph(model)
    g = G.g
    n_done = 0
    for pad in list(g.node):
        if pad.op_type != "Pad" or _attrs(pad).get("mode", b"constant") not in (b"constant", b"", "constant"):
            continue
        if _input(pad, 2):
            v = G.const(pad.input[2])
            if v is None or v.any():
                continue
        if _input(pad, 3):  # axes input: keep it simple, leave such pads alone
            continue
        q = G.only_user(pad.output[0], "QuantizeLinear")
        if q is None or not G.is_u8_activation_q(q):
            continue  # per-axis (the pad value would differ per channel) or int8 (TensorRT) quantization
        src, padded, quantized = pad.input[0], pad.output[0], q.output[0]
        q.input[0], q.output[0] = src, padded + "_quantized"
        del pad.input[2:]
        pad.input[0] = padded + "_quantized"
        pad.input.append(q.input[2])
        pad.output[0] = quantized
        for v in [v for v in g.value_info if v.name == padded]:  # was float, now gone
            g.value_info.remove(v)
        nodes = list(g.node)
        i, j = nodes.index(pad), nodes.index(q)
        nodes[i], nodes[j] = nodes[j], nodes[i]  # keep topological order
        del g.node[:]
        g.node.extend(nodes)
        n_done += 1
    return n_done


def _stem_pattern(G: _Graph, pool):
    """The nodes of ``DQ(x) -> Conv 3x3/1 -> Relu -> Q -> DQ -> MaxPool 3x3/2 -> Q`` ending at ``pool``,
    or None when the graph around ``pool`` is anything else."""
    if not _conv_like(pool, [3, 3], [2, 2], [1, 1, 1, 1]):
        return None
    dq_a = G.made_by(pool.input[0], "DequantizeLinear")
    q_m = G.only_user(pool.output[0], "QuantizeLinear")
    q_r = dq_a and G.made_by(dq_a.input[0], "QuantizeLinear")
    relu = q_r and G.made_by(q_r.input[0], "Relu")
    conv = relu and G.made_by(relu.input[0], "Conv")
    if conv is None or q_m is None or not _conv_like(conv, [3, 3], [1, 1], [1, 1, 1, 1]):
        return None
    dq_x, dq_w = G.made_by(conv.input[0], "DequantizeLinear"), G.made_by(conv.input[1], "DequantizeLinear")
    if dq_x is None or dq_w is None or not all(map(G.is_u8_activation_q, (dq_x, q_r, dq_a, q_m))):
        return None
    if not (G.same_qparams(q_r, dq_a) and G.same_qparams(q_r, q_m)):
        return None  # the max-pool requantizes: moving it to uint8 would not be exact
    singles = ((conv.output[0], "Relu"), (relu.output[0], "QuantizeLinear"), (q_r.output[0], "DequantizeLinear"),
               (dq_a.output[0], "MaxPool"), (dq_w.output[0], "Conv"))
    if any(G.only_user(t, op) is None for t, op in singles):
        return None
    weight, (static_bias, bias) = G.int8_weight(dq_w), G.const_bias(conv)
    shape = G.shapes.get(dq_x.input[0])
    if weight is None or not static_bias or not shape or len(shape) != 4 or None in shape[1:] or shape[3] % 2:
        return None
    w, w_scale, w_zp = weight
    return dict(dq_x=dq_x, dq_w=dq_w, conv=conv, relu=relu, q_r=q_r, dq_a=dq_a, pool=pool, q_m=q_m, w=w,
                w_scale=w_scale, w_zp=w_zp, bias=bias, shape=shape)


def _column_pair_weight(w: np.ndarray) -> np.ndarray:
    """3x3 conv weight ``[O, C, 3, 3]`` -> the same conv over column pairs, ``[2O, 2C, 3, 2]``.

    Output channel ``k * O + o`` at packed column ``p`` is image column ``2p + k``. The input is
    paired one column earlier: channel ``k' * C + c`` at packed column ``q`` is image column
    ``2q - 1 + k'`` (the image gets one zero-point column on each side), so the two packed columns
    ``p`` and ``p + 1`` hold image columns ``2p - 1 .. 2p + 2``, all that outputs ``2p`` and
    ``2p + 1`` read: a kernel 2 packed columns wide (3 would be a third zeros, and ~25% slower).
    """
    o, c = w.shape[:2]
    out = np.zeros((2 * o, 2 * c, 3, 2), w.dtype)
    for k in range(2):
        for kp in range(2):
            for dx in range(2):
                off = 2 * dx - 1 + kp - k  # image column read, relative to the output column
                if -1 <= off <= 1:
                    out[k * o:(k + 1) * o, kp * c:(kp + 1) * c, :, dx] = w[:, :, :, off + 1]
    return out


def _pad_columns(G: _Graph, xq: str, zp_name: str, pre: str, exclusive: bool) -> tuple[list, str]:
    """One zero-point column on each side of the uint8 image ``xq``: the stem ``Pad`` widened when
    ``xq`` comes from one that only the stem reads (``exclusive``; it already writes every byte),
    else a new Pad. Returns (new nodes, padded tensor)."""
    from onnx import helper

    pad = G.made_by(xq, "Pad")
    if (exclusive and pad is not None and len(pad.input) == 3 and pad.input[1] in G.inits
            and pad.input[2] in G.inits and np.array_equal(G.const(pad.input[2]), G.const(zp_name))
            and _attrs(pad).get("mode", b"constant") in (b"constant", "constant")):
        pads = G.const(pad.input[1]).copy()
        pads[3] += 1
        pads[7] += 1
        pad.input[1] = G.add_init(pads, f"{pre}/pads")
        for v in [v for v in G.g.value_info if v.name == xq]:  # now two columns wider
            G.g.value_info.remove(v)
        return [], xq
    G.add_init(np.array([0, 0, 0, 1, 0, 0, 0, 1], np.int64), f"{pre}/pads")
    return [helper.make_node("Pad", [xq, f"{pre}/pads", zp_name], [f"{pre}/x_padded"], name=f"{pre}/pad")], \
        f"{pre}/x_padded"


def pack_stem_columns(model) -> int:
    """Run the full-resolution stem conv on column pairs (exact).

    ``DQ -> Conv 3x3/1 -> Relu -> Q -> DQ -> MaxPool 3x3/2 -> Q`` (the stem, ``C -> O`` channels at
    ``H x W``, W even) becomes: the quantized input padded by one zero-point column on each side and
    viewed as ``2C`` channels at ``H x (W/2 + 1)`` (column pairs), one ``2C -> 2O`` conv with a 3x2
    kernel (:func:`_column_pair_weight`; per-channel scales and bias repeated), its uint8 output
    viewed back as ``O`` channels at ``H x W``, and the same 3x3/2 max-pool in uint8 (it shares its
    input's scale, so no DQ/Q). Every int32 accumulation is the conv's own and max commutes with
    the monotone quantization, so outputs are bit-identical.

    Both views are a reshape between explicit NCHW -> NHWC -> NCHW transposes: in NHWC memory
    column pairs *are* channels, so the reshape moves no data, and ORT's layout transformer cancels
    each explicit transpose against the one it puts around its NHWC int8 kernels. (A 5-D
    reshape/transpose in NCHW semantics does the same maths but pushes the max-pool out of NHWC.)

    Why: ORT's u8s8 conv pays a per-output-pixel cost (indirection buffer) that dominates a conv
    with 4 input channels. Half the pixels with twice the channels: 2.65 vs 4.4 ms for the conv
    (2 threads, 384x1248). Returns the number of rewrites.
    """
    from onnx import helper

    if not any(o.domain in ("", "ai.onnx") and o.version >= 12 for o in model.opset_import):
        return 0  # MaxPool on uint8 needs opset 12
    G = _Graph(model)
    n_done = 0
    for out in [n.output[0] for n in G.g.node if n.op_type == "MaxPool"]:
        p = _stem_pattern(G, G.producer[out])  # look up afresh: a rewrite copies the node list
        if p is None:
            continue
        _, c, h, w = p["shape"]
        o = p["w"].shape[0]
        pre = f"{p['conv'].name or 'stem'}/column_pairs"
        t = lambda s: f"{pre}/{s}"  # noqa: E731
        w_inputs = [G.add_init(_column_pair_weight(p["w"]), t("w")),
                    G.add_init(np.tile(p["w_scale"], 2).astype(np.float32), t("w_scale"))]
        if p["w_zp"] is not None:
            w_inputs.append(G.add_init(np.tile(p["w_zp"], 2), t("w_zp")))
        conv_inputs = [t("x_dq"), t("w_dq")]
        if p["bias"] is not None:
            conv_inputs.append(G.add_init(np.tile(p["bias"], 2), t("bias")))
        G.add_init(np.array([0, h, w // 2 + 1, 2 * c], np.int64), t("shape"))
        G.add_init(np.array([0, h, w, o], np.int64), t("unpacked"))
        xq, xs, xz = p["dq_x"].input[:3]
        rs, rz = p["q_r"].input[1:3]
        exclusive = (G.only_user(xq, "DequantizeLinear") is not None
                     and G.only_user(p["dq_x"].output[0], "Conv") is not None)
        new, padded = _pad_columns(G, xq, xz, pre, exclusive)
        new += [
            # NCHW -> NHWC, column pairs as channels (a free reshape there), back to NCHW: ORT's NHWC
            # transformer cancels that last transpose against the one it puts before the int8 conv
            helper.make_node("Transpose", [padded], [t("nhwc")], perm=[0, 2, 3, 1], name=t("to_nhwc")),
            helper.make_node("Reshape", [t("nhwc"), t("shape")], [t("pairs")], name=t("pairs")),
            helper.make_node("Transpose", [t("pairs")], [t("x")], perm=[0, 3, 1, 2], name=t("to_nchw")),
            helper.make_node("DequantizeLinear", [t("x"), xs, xz], [t("x_dq")], name=t("x_dequantize")),
            helper.make_node("DequantizeLinear", w_inputs, [t("w_dq")], axis=0, name=t("w_dequantize")),
            helper.make_node("Conv", conv_inputs, [t("conv")], kernel_shape=[3, 2], strides=[1, 1],
                             pads=[1, 0, 1, 0], name=t("conv")),
            helper.make_node("Relu", [t("conv")], [t("relu")], name=t("relu")),
            helper.make_node("QuantizeLinear", [t("relu"), rs, rz], [t("q")], name=t("quantize")),
            # unpack the same way: NHWC, column pairs back to columns (free there), NCHW; ORT cancels
            # both transposes against the ones it puts around its NHWC kernels
            helper.make_node("Transpose", [t("q")], [t("q_nhwc")], perm=[0, 2, 3, 1], name=t("out_to_nhwc")),
            helper.make_node("Reshape", [t("q_nhwc"), t("unpacked")], [t("columns")], name=t("columns")),
            helper.make_node("Transpose", [t("columns")], [t("y")], perm=[0, 3, 1, 2], name=t("out_to_nchw")),
            helper.make_node("MaxPool", [t("y")], [p["q_m"].output[0]], kernel_shape=[3, 3], strides=[2, 2],
                             pads=[1, 1, 1, 1], name=t("pool")),
        ]
        removed = [p[k] for k in ("dq_w", "conv", "relu", "q_r", "dq_a", "pool", "q_m")]
        if G.only_user(p["dq_x"].output[0], "Conv") is not None:
            removed.append(p["dq_x"])
        G.replace(removed, new, p["q_m"])
        n_done += 1
    return n_done


def pad_output_channels(model, multiple: int = 16) -> int:
    """Give int8 convs that feed float ops a padded output width (zero filters), sliced off in float.

    Applies to ``Conv -> Q -> DQ`` whose dequantized output only feeds float ops (the per-kind
    int8 head: 27 class, 9 confidence, 36 box channels) and whose width is under ``multiple`` or
    not a multiple of 4. ORT's u8s8 conv kernels handle such widths on a slow path: a 3x3 conv
    over 192 channels at 24x78 took 0.35 ms for 9 outputs and 0.13 ms for 16, 0.39 ms for 27 and
    0.20 ms for 32 (2 threads). The extra channels have zero weights and bias, so the sliced
    result is bit-identical. Returns the number of convs padded.
    """
    from onnx import helper

    G = _Graph(model)
    n_done = 0
    for out in [n.output[0] for n in G.g.node if n.op_type == "Conv"]:
        conv = G.producer[out]  # look up afresh: a rewrite copies the node list
        dq_w = G.made_by(conv.input[1], "DequantizeLinear")
        q = G.only_user(conv.output[0], "QuantizeLinear")
        dq = q and G.only_user(q.output[0], "DequantizeLinear")
        if dq_w is None or dq is None or not G.is_u8_activation_q(q):
            continue
        weight = G.int8_weight(dq_w)
        if weight is None or G.only_user(dq_w.output[0], "Conv") is None or _attrs(conv).get("group", 1) != 1:
            continue
        w, scale, zp = weight
        o = w.shape[0]
        if o >= multiple and o % 4 == 0:
            continue
        if not G.feeds_float_only(dq.output[0]):
            continue  # the output feeds int8 work: a Slice there would break ORT's QLinear fusion
        static_bias, b = G.const_bias(conv)
        if not static_bias:
            continue
        width = -(-o // multiple) * multiple
        pre = f"{conv.name or 'conv'}/padded{width}"
        pad = width - o
        w_in = [G.add_init(np.concatenate([w, np.zeros((pad, *w.shape[1:]), w.dtype)]), f"{pre}/w"),
                G.add_init(np.concatenate([scale, np.ones(pad, scale.dtype)]), f"{pre}/w_scale")]
        if zp is not None:
            w_in.append(G.add_init(np.concatenate([zp, np.zeros(pad, zp.dtype)]), f"{pre}/w_zp"))
        conv_in = [conv.input[0], f"{pre}/w_dq"]
        if b is not None:
            conv_in.append(G.add_init(np.concatenate([b, np.zeros(pad, b.dtype)]), f"{pre}/bias"))
        for k, v in (("starts", [0]), ("ends", [o]), ("axes", [1])):
            G.add_init(np.array(v, np.int64), f"{pre}/{k}")
        new_conv = helper.make_node("Conv", conv_in, [f"{pre}/conv"], name=f"{pre}/conv")
        new_conv.attribute.extend(conv.attribute)
        new = [helper.make_node("DequantizeLinear", w_in, [f"{pre}/w_dq"], axis=0, name=f"{pre}/w_dequantize"),
               new_conv,
               helper.make_node("QuantizeLinear", [f"{pre}/conv", *q.input[1:3]], [f"{pre}/q"], name=f"{pre}/quantize"),
               helper.make_node("DequantizeLinear", [f"{pre}/q", *dq.input[1:3]], [f"{pre}/dq"],
                                name=f"{pre}/dequantize"),
               helper.make_node("Slice", [f"{pre}/dq", f"{pre}/starts", f"{pre}/ends", f"{pre}/axes"], [dq.output[0]],
                                name=f"{pre}/slice")]
        G.replace([dq_w, conv, q, dq], new, dq)
        n_done += 1
    return n_done


def _float_out_pattern(G: _Graph, conv):
    """``DQ(u8 x) -> Conv <- DQ(s8 w, per channel, zero point 0)`` whose output stays float, as a
    dict, or None when ``conv`` is anything else (ORT fuses a conv with a quantized output itself)."""
    a = _attrs(conv)
    if (conv.op_type != "Conv" or a.get("group", 1) != 1 or a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET")
            or any(d != 1 for d in a.get("dilations", [1, 1])) or len(a.get("kernel_shape", [])) != 2):
        return None
    dq_x, dq_w = G.made_by(conv.input[0], "DequantizeLinear"), G.made_by(conv.input[1], "DequantizeLinear")
    if dq_x is None or dq_w is None or not G.is_u8_activation_q(dq_x) or not G.feeds_float_only(conv.output[0]):
        return None
    weight, (static_bias, bias) = G.int8_weight(dq_w, per_tensor_ok=True), G.const_bias(conv)
    if weight is None or not static_bias or (weight[2] is not None and weight[2].any()):
        return None  # MatMulInteger's weights here are symmetric
    w, scale, _ = weight
    shape = G.shapes.get(dq_x.input[0])
    if not shape or len(shape) != 4 or None in shape[1:] or shape[1] != w.shape[1]:
        return None
    return dict(dq_x=dq_x, dq_w=dq_w, w=w, w_scale=scale, bias=bias, shape=shape,
                strides=list(a.get("strides", [1, 1])), pads=list(a.get("pads", [0, 0, 0, 0])))


def float_out_conv_as_matmul(model) -> int:
    """Run an int8 conv whose output stays float (the default head) as an integer matmul.

    ``DQ(u8 x) -> Conv(DQ(s8 w)) -> float`` is what the quantizer makes of a conv with int8
    input and weights and no output quantization (``QuantConfig.head_weights: int8``). ORT cannot
    fuse it into QLinearConv (that needs a quantized output), so it dequantizes the weights at
    load and runs an fp32 conv: 1.7 ms of a ~18 ms 0.25x model for the 192 -> 72 3x3 head. Here
    it becomes im2col plus ``MatMulInteger`` with the int32 result scaled to float: the uint8
    input transposed to NHWC (ORT cancels that against its own), padded with the zero point,
    flattened over pixels and ``Gather``-ed into ``[N, pixels, k*k*C]`` rows (the gather indices
    are a small constant expression ORT folds at load), multiplied with the ``[k*k*C, O]`` int8
    weights, scaled by ``x_scale * w_scale``, biased, and transposed back to NCHW. The int32
    accumulation is exact; the float conv it replaces rounds, so outputs agree to float
    precision, not bit for bit. Measured at 24x78 (2 threads): 0.8 vs 2.3 ms for that conv alone.
    Returns the number of convs rewritten.
    """
    from onnx import helper

    G = _Graph(model)
    n_done = 0
    weights: dict[tuple, str] = {}  # a conv called per FPN level: its [k*k*C, O] int8 weight stored once
    for out in [n.output[0] for n in G.g.node if n.op_type == "Conv"]:
        conv = G.producer[out]  # look up afresh: a rewrite copies the node list
        p = _float_out_pattern(G, conv)
        if p is None:
            continue
        _, c, h, w_in = p["shape"]
        o, _, kh, kw = p["w"].shape
        (sh, sw), (pt, pl, pb, pr) = p["strides"], p["pads"]
        hp, wp = h + pt + pb, w_in + pl + pr
        ho, wo = (hp - kh) // sh + 1, (wp - kw) // sw + 1
        pre = f"{conv.name or 'conv'}/int8_matmul"
        t = lambda s: f"{pre}/{s}"  # noqa: E731
        xq, xs, xz = p["dq_x"].input[:3]
        # row (y*sh + dy) * wp + (x*sw + dx) of the padded, flattened input for output pixel (y, x), tap (dy, dx)
        G.add_init((np.arange(ho, dtype=np.int64) * sh * wp).reshape(ho, 1, 1), t("rows"))
        G.add_init((np.arange(wo, dtype=np.int64) * sw).reshape(1, wo, 1), t("cols"))
        G.add_init((np.arange(kh, dtype=np.int64)[:, None] * wp + np.arange(kw)).reshape(1, 1, kh * kw), t("taps"))
        G.add_init(np.array([-1], np.int64), t("flat1"))
        G.add_init(np.array([-1, hp * wp, c], np.int64), t("pixels"))
        G.add_init(np.array([-1, ho * wo, kh * kw * c], np.int64), t("patches"))
        wkey = (p["dq_w"].input[0], kh, kw, c, o)
        if wkey not in weights:
            weights[wkey] = G.add_init(np.ascontiguousarray(p["w"].transpose(2, 3, 1, 0).reshape(kh * kw * c, o)),
                                       t("w"))
        G.add_init(G.const(xs).astype(np.float32) * p["w_scale"].astype(np.float32), t("scale"))
        G.add_init(np.array([-1, ho, wo, o], np.int64), t("nhwc_shape"))
        new = [helper.make_node("Add", [t("rows"), t("cols")], [t("pixel")], name=t("pixel")),
               helper.make_node("Add", [t("pixel"), t("taps")], [t("index3")], name=t("index3")),
               helper.make_node("Reshape", [t("index3"), t("flat1")], [t("index")], name=t("index")),
               helper.make_node("Transpose", [xq], [t("x_nhwc")], perm=[0, 2, 3, 1], name=t("to_nhwc"))]
        x = t("x_nhwc")
        if any((pt, pl, pb, pr)):
            G.add_init(np.array([0, pt, pl, 0, 0, pb, pr, 0], np.int64), t("pads"))  # NHWC begins, ends
            new.append(helper.make_node("Pad", [x, t("pads"), xz], [t("x_padded")], name=t("pad")))
            x = t("x_padded")
        new += [helper.make_node("Reshape", [x, t("pixels")], [t("x_flat")], name=t("flatten")),
                helper.make_node("Gather", [t("x_flat"), t("index")], [t("gathered")], axis=1, name=t("im2col")),
                helper.make_node("Reshape", [t("gathered"), t("patches")], [t("cols_u8")], name=t("patches")),
                helper.make_node("MatMulInteger", [t("cols_u8"), weights[wkey], xz], [t("acc")], name=t("matmul")),
                helper.make_node("Cast", [t("acc")], [t("acc_f")], to=1, name=t("cast")),
                helper.make_node("Mul", [t("acc_f"), t("scale")], [t("scaled")], name=t("scale"))]
        y = t("scaled")
        if p["bias"] is not None:
            G.add_init(p["bias"].astype(np.float32), t("bias"))
            new.append(helper.make_node("Add", [y, t("bias")], [t("biased")], name=t("bias")))
            y = t("biased")
        new += [helper.make_node("Reshape", [y, t("nhwc_shape")], [t("y_nhwc")], name=t("unflatten")),
                helper.make_node("Transpose", [t("y_nhwc")], [out], perm=[0, 3, 1, 2], name=t("to_nchw"))]
        removed = [conv]
        if G.only_user(p["dq_w"].output[0], "Conv") is not None:
            removed.append(p["dq_w"])
        if G.only_user(p["dq_x"].output[0], "Conv") is not None:
            removed.append(p["dq_x"])
        G.replace(removed, new, conv)
        n_done += 1
    return n_done


def shrink_repeated_constants(model, min_bytes: int = 4096) -> int:
    """Store quantized constants that repeat along the channel axis once, expanded when loaded.

    ``AvgPoolAsConv``'s border maps are ``[1, C, H, W]`` uint8 with every channel equal (a per-channel map
    keeps ORT's NHWC QLinearMul fast); at 384x1248 the three of a 0.25x model are 1.4 MB, more
    than the model's weights. Such an 8-bit initializer read by a DequantizeLinear becomes its
    ``[1, 1, H, W]`` slice and an ``Expand`` back to ``[1, C, H, W]``; ORT's constant folding undoes
    the Expand when the session loads (the fused QLinearMul still sees the full constant), so
    outputs and speed are unchanged and the file shrinks. Returns the number of constants shrunk.
    """
    from onnx import helper

    G = _Graph(model)
    expands = {}  # id(DequantizeLinear) -> [its new Expand]
    for dq in G.g.node:
        if dq.op_type != "DequantizeLinear" or not G.is_u8_activation_q(dq):
            continue  # weights and int8 graphs: not read as arrays
        name = dq.input[0]
        v = G.const(name)
        if (v is None or v.dtype != np.uint8 or v.ndim != 4 or v.shape[1] < 2 or v.nbytes < min_bytes
                or len(G.users.get(name, [])) != 1 or not (v == v[:, :1]).all()):
            continue
        G.add_init(np.ascontiguousarray(v[:, :1]), f"{name}/one_channel")
        G.add_init(np.array(v.shape, np.int64), f"{name}/shape")
        expands[id(dq)] = [helper.make_node("Expand", [f"{name}/one_channel", f"{name}/shape"], [f"{name}/expanded"],
                                            name=f"{name}/expand")]
        dq.input[0] = f"{name}/expanded"
    if expands:
        G.rebuild(insert_before=expands)  # also drops the full-size initializers, now unread
    return len(expands)


# the exporter's passes, in order (pack_stem_columns widens the uint8 Pad quantize_before_pad makes)
ORT_REWRITES = {f.__name__: f for f in (quantize_before_pad, pack_stem_columns, pad_output_channels,
                                        float_out_conv_as_matmul, shrink_repeated_constants)}
