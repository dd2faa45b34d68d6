"""An ONNX graph (fp32, or Q/DQ INT8 as `edgereid quantize --int8` writes it) as a torch module whose Conv, Gemm
and MatMul weights and biases can be trained.

Every node runs as the ONNX operator defines it, so the module computes what the file computes: a QuantizeLinear
rounds at the file's own scale and zero point (half to even, saturating at its type's range, as ONNX Runtime
does) and its gradient passes straight through inside the range; an int8 weight behind a DequantizeLinear becomes a
float parameter rounded back onto the file's per-channel grid at every forward, an int32 bias likewise. Activation
scales stay the file's unless `train_scales` (then each is learned, LSQ-style). `write_back` puts the trained values
into a copy of the file in the same form (int8 / int32 initializers on their grids, an int32 bias's grid following
its input's scale), so ONNX Runtime and TensorRT take it as they took the original.

The operator set is what edgereid's exported graphs use; another operator is refused by name.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edgereid._optional import require
from edgereid.errors import ModelFileError

SHAPE_OPS = ("Flatten", "Reshape", "Identity")  # ops that move no value: a quantized tensor stays on its grid
TRAINABLE_READERS = {"Conv": (1, 2), "Gemm": (1, 2), "MatMul": (1,)}  # op -> input positions that are parameters
QUANT_RANGES = {np.dtype(np.uint8): (0, 255), np.dtype(np.int8): (-128, 127), np.dtype(np.int32): (-2 ** 31,
                                                                                                    2 ** 31 - 1)}


def _round_ste(x: torch.Tensor) -> torch.Tensor:
    """Round half to even forward; identity backward."""
    return x + (torch.round(x) - x).detach()


def _axis_shape(scale: torch.Tensor, rank: int, axis: int) -> torch.Tensor:
    """A per-axis scale or zero point shaped to broadcast along `axis` of a rank-`rank` tensor."""
    if scale.dim() == 0:
        return scale
    shape = [1] * rank
    shape[axis % rank] = -1
    return scale.reshape(shape)


def quantize(x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, low: int, high: int,
             axis: int = 1) -> torch.Tensor:
    """ONNX QuantizeLinear on float values (the integers held as float): clamp(round(x / scale) + zero)."""
    s, z = _axis_shape(scale, x.dim(), axis), _axis_shape(zero, x.dim(), axis)
    return torch.clamp(_round_ste(x / s) + z, low, high)


def dequantize(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, axis: int = 1) -> torch.Tensor:
    """ONNX DequantizeLinear: (q - zero) * scale."""
    return (q - _axis_shape(zero, q.dim(), axis)) * _axis_shape(scale, q.dim(), axis)


class QuantParam(nn.Module):
    """An integer initializer behind a DequantizeLinear, trained in float: forward rounds it to the file's grid."""

    def __init__(self, q: np.ndarray, scale: np.ndarray, zero: np.ndarray, axis: int) -> None:
        super().__init__()
        self.dtype, self.axis = q.dtype, axis
        self.low, self.high = QUANT_RANGES[q.dtype]
        if q.dtype == np.int8 and not np.any(zero):
            self.low = -127  # symmetric int8 weights, as written: TensorRT refuses -128
        self.register_buffer("scale", torch.from_numpy(np.array(scale, np.float32)))
        self.register_buffer("zero", torch.from_numpy(np.array(zero).astype(np.float32)))
        q = torch.from_numpy(q.astype(np.float64))
        self.value = nn.Parameter(dequantize(q, self.scale.double(), self.zero.double(), axis).float())

    def forward(self, scale: torch.Tensor | None = None) -> torch.Tensor:
        """The value on the file's grid (or on `scale`'s: an int32 bias whose input scale is being trained)."""
        scale = self.scale if scale is None else scale
        return dequantize(quantize(self.value, scale, self.zero, self.low, self.high, self.axis), scale, self.zero,
                          self.axis)

    def integers(self, scale: np.ndarray | None = None) -> np.ndarray:
        """The trained value on the file's grid (or on `scale`'s: an int32 bias whose input scale was trained), in
        the initializer's type."""
        grid = self.scale if scale is None else torch.from_numpy(np.asarray(scale, np.float32))
        with torch.no_grad():  # in float32, as forward computes it
            q = quantize(self.value, grid, self.zero, self.low, self.high, self.axis)
        # float32 holds 2**31 - 1 as 2**31: clip once more in float64 so that the cast cannot wrap around
        return np.clip(q.numpy().astype(np.float64), self.low, self.high).astype(self.dtype)


def _attrs(node) -> dict:
    onnx = require("onnx")
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _ints(t) -> list:
    return [int(v) for v in t.reshape(-1).tolist()]


class OnnxGraph(nn.Module):
    """`model` (an onnx.ModelProto) as a torch module: forward(images) -> {output name: tensor}.

    `trainable`: the float weights and biases read by Conv / Gemm / MatMul, and the int8 / int32 ones behind a
    DequantizeLinear that such a node reads, are parameters; the rest are constants. `train_scales`: the
    per-tensor scale of every QuantizeLinear (an activation's) is a parameter too (in log space, so it stays
    positive; its gradient is LSQ's: round(x / s) - x / s inside the range, the clipped level outside), shared by
    the DequantizeLinear that reads the same initializer; the zero points stay."""

    def __init__(self, model, trainable: bool = True, train_scales: bool = False) -> None:
        super().__init__()
        onnx = require("onnx")
        from onnx import numpy_helper

        self.model = model
        graph = model.graph
        inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
        self.nodes = list(graph.node)
        self.input_name = next(i.name for i in graph.input if i.name not in inits)
        self.output_names = [o.name for o in graph.output]
        producers = {o: n for n in self.nodes for o in n.output}
        read_as_param = set()
        for node in self.nodes:
            for pos in TRAINABLE_READERS.get(node.op_type, ()) if trainable else ():
                if pos < len(node.input) and node.input[pos]:
                    name = node.input[pos]
                    source = producers.get(name)
                    if source is not None and source.op_type == "DequantizeLinear" and source.input[0] in inits:
                        read_as_param.add(source.output[0])
                    elif name in inits:
                        read_as_param.add(name)
        self.float_params = nn.ParameterDict()
        self.quant_params = nn.ModuleDict()
        self._param_keys: dict = {}  # tensor name -> (kind, key)
        self.constants: dict = {}
        for name, value in inits.items():
            if name in read_as_param and value.dtype == np.float32:
                key = f"p{len(self._param_keys)}"
                self.float_params[key] = nn.Parameter(torch.from_numpy(value.copy()))
                self._param_keys[name] = ("float", key)
            else:
                self.constants[name] = value
        self._quant_sources: dict = {}  # DequantizeLinear output -> initializer name
        for node in self.nodes:
            if node.op_type == "DequantizeLinear" and node.output[0] in read_as_param:
                q = inits[node.input[0]]
                scale = inits[node.input[1]]
                zero = inits[node.input[2]] if len(node.input) > 2 and node.input[2] else np.zeros_like(scale, q.dtype)
                key = f"q{len(self._param_keys)}"
                self.quant_params[key] = QuantParam(q, scale, zero, int(_attrs(node).get("axis", 1)))
                self._param_keys[node.output[0]] = ("quant", key)
                self._quant_sources[node.output[0]] = node.input[0]
        unknown = sorted({n.op_type for n in self.nodes} - set(OPS))
        if unknown:
            raise ModelFileError(f"the ONNX graph uses {', '.join(unknown)}, which edgereid's INT8 tuning does not "
                                 f"run; it takes the graphs `edgereid export` writes and `quantize` quantizes.")
        self.log_scales = nn.ParameterDict()
        self._scale_keys: dict = {}  # activation scale initializer -> key
        if train_scales:
            self._scales_as_parameters()
        self._bias_grids = self._int32_biases(producers, inits)
        self._const_tensors = {k: torch.from_numpy(np.array(v)) for k, v in self.constants.items()}
        self._node_attrs = [_attrs(n) for n in self.nodes]
        _ = onnx  # the import above is the dependency check

    def _scales_as_parameters(self) -> None:
        for node in self.nodes:
            name = node.input[1] if node.op_type == "QuantizeLinear" else ""
            if name in self.constants and self.constants[name].ndim == 0 and name not in self._scale_keys:
                key = f"s{len(self._scale_keys)}"
                self.log_scales[key] = nn.Parameter(torch.tensor(math.log(float(self.constants.pop(name)))))
                self._scale_keys[name] = key

    def _int32_biases(self, producers: dict, inits: dict) -> list:
        """(bias DQ output, input scale, weight scale) of every int32 bias read by a Conv / Gemm whose input and
        weights are dequantized (its grid is input scale x weight scale), each held inside the range an integer
        kernel can add it in."""
        found = []
        for node in self.nodes:
            if node.op_type not in ("Conv", "Gemm") or len(node.input) < 3 or node.input[2] not in self._quant_sources:
                continue
            x_dq, w_dq = producers.get(node.input[0]), producers.get(node.input[1])
            while x_dq is not None and x_dq.op_type in SHAPE_OPS:  # a Gemm reads its pooling through Flatten
                x_dq = producers.get(x_dq.input[0])
            if x_dq is None or w_dq is None or not "DequantizeLinear" == x_dq.op_type == w_dq.op_type:
                continue
            found.append((node.input[2], x_dq.input[1], w_dq.input[1]))
            # the kernel adds the bias to the int32 sum of (x - zero) * w: leave that sum room (uint8 x int8
            # products, one per weight of an output channel), or it wraps around
            weight = inits.get(w_dq.input[0])
            fan_in = int(np.prod(weight.shape[1:])) if weight is not None else 0
            bias = self.quant_params[self._param_keys[node.input[2]][1]]
            bias.high = 2 ** 31 - 1 - 255 * 128 * fan_in
            bias.low = -bias.high
        return found

    def forward(self, images: torch.Tensor) -> dict:
        values: dict = dict(self._const_tensors)
        for name, (kind, key) in self._param_keys.items():
            values[name] = self.float_params[key] if kind == "float" else self.quant_params[key]()
        for name, key in self._scale_keys.items():
            values[name] = self.log_scales[key].exp()
        for bias, x_scale, w_scale in self._bias_grids if self._scale_keys else ():
            grid = values[x_scale] * values[w_scale]  # the grid the written file will hold
            values[bias] = self.quant_params[self._param_keys[bias][1]](grid)
        values[self.input_name] = images
        for node, attrs in zip(self.nodes, self._node_attrs):
            if node.op_type == "DequantizeLinear" and node.output[0] in self._quant_sources:
                continue  # a parameter's DequantizeLinear: its value is the parameter's
            args = [values[i] if i else None for i in node.input]
            out = OPS[node.op_type](args, attrs)
            for name, value in zip(node.output, out if isinstance(out, tuple) else (out,)):
                values[name] = value
        return {name: values[name] for name in self.output_names}

    def write_back(self):
        """A copy of the model with the trained parameters in place of the original initializers (int8 / int32 on
        their grids, float as float, the trained activation scales); nothing else changes."""
        onnx = require("onnx")
        from onnx import numpy_helper

        out = onnx.ModelProto()
        out.CopyFrom(self.model)
        new = {name: np.float32(math.exp(self.log_scales[key].item())) for name, key in self._scale_keys.items()}
        scale_of = lambda name: new.get(name, self.constants.get(name))  # noqa: E731
        grids = {}
        for bias, x_scale, w_scale in self._bias_grids if self._scale_keys else ():
            grids[bias] = (np.float32(scale_of(x_scale)) * scale_of(w_scale)).astype(np.float32)  # as forward
            new[next(n for n in self.nodes if n.output[0] == bias).input[1]] = grids[bias]
        for name, (kind, key) in self._param_keys.items():
            if kind == "float":
                new[name] = self.float_params[key].detach().numpy().astype(np.float32)
            else:
                new[self._quant_sources[name]] = self.quant_params[key].integers(grids.get(name))
        for init in out.graph.initializer:
            if init.name in new:
                init.CopyFrom(numpy_helper.from_array(new[init.name], init.name))
        return out


def _conv(args, a):
    x, w, b = (args + [None])[:3]
    pads = a.get("pads", [0] * (2 * (x.dim() - 2)))
    half = len(pads) // 2
    if pads[:half] != pads[half:]:
        x = F.pad(x, [p for i in reversed(range(half)) for p in (pads[i], pads[i + half])])
        pads = [0] * len(pads)
    if a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        raise ModelFileError("a Conv with auto_pad; export the graph with explicit pads.")
    return F.conv2d(x, w, b, tuple(a.get("strides", [1, 1])), tuple(pads[:half]), tuple(a.get("dilations", [1, 1])),
                    a.get("group", 1))


def _quantize_linear(args, a):
    x, scale, zero = (args + [None])[:3]
    low, high = QUANT_RANGES[np.dtype(np.uint8)] if zero is None else _range_of(zero)
    zero = torch.zeros(()) if zero is None else zero.float()
    return quantize(x, scale.float(), zero, low, high, a.get("axis", 1))


def _range_of(zero: torch.Tensor) -> tuple:
    return {torch.uint8: (0, 255), torch.int8: (-128, 127), torch.int32: (-2 ** 31, 2 ** 31 - 1)}[zero.dtype]


def _dequantize_linear(args, a):
    q, scale, zero = (args + [None])[:3]
    zero = torch.zeros(()) if zero is None else zero.float()
    return dequantize(q.float(), scale.float(), zero, a.get("axis", 1))


def _clip(args, a):
    x, low, high = (args + [None, None])[:3]
    if low is not None:
        x = torch.clamp_min(x, float(low))
    return x if high is None else torch.clamp_max(x, float(high))


def _slice(args, a):
    x, starts, ends = args[:3]
    axes = _ints(args[3]) if len(args) > 3 and args[3] is not None else list(range(len(starts)))
    steps = _ints(args[4]) if len(args) > 4 and args[4] is not None else [1] * len(axes)
    index = [slice(None)] * x.dim()
    for axis, start, end, step in zip(axes, _ints(starts), _ints(ends), steps):
        if step <= 0:
            raise ModelFileError("a Slice with a negative step; edgereid's INT8 tuning does not run it.")
        index[axis] = slice(start, min(end, x.shape[axis]), step)
    return x[tuple(index)]


def _gemm(args, a):
    x, w, c = (args + [None])[:3]
    x = x.t() if a.get("transA", 0) else x
    w = w.t() if a.get("transB", 0) else w
    out = a.get("alpha", 1.0) * (x @ w)
    return out if c is None else out + a.get("beta", 1.0) * c


def _batch_norm(args, a):
    x, scale, bias, mean, var = args[:5]
    return F.batch_norm(x, mean, var, scale, bias, False, 0.0, a.get("epsilon", 1e-5))


def _reduce_l2(args, a):
    axes = a.get("axes", _ints(args[1]) if len(args) > 1 and args[1] is not None else None)
    return torch.linalg.vector_norm(args[0], dim=axes, keepdim=bool(a.get("keepdims", 1)))


def _expand(args, a):
    x, shape = args
    return torch.broadcast_to(x, torch.broadcast_shapes(x.shape, tuple(_ints(shape))))


def _constant(args, a):
    from onnx import numpy_helper

    return torch.from_numpy(np.array(numpy_helper.to_array(a["value"])))


def _pool(kind):
    def run(args, a):
        x, pads = args[0], a.get("pads", [0, 0, 0, 0])
        if pads[:2] != pads[2:]:
            raise ModelFileError(f"a {kind} with asymmetric pads; edgereid's INT8 tuning does not run it.")
        fn = F.max_pool2d if kind == "MaxPool" else F.avg_pool2d
        extra = {} if kind == "MaxPool" else {"count_include_pad": bool(a.get("count_include_pad", 0))}
        return fn(x, tuple(a["kernel_shape"]), tuple(a.get("strides", a["kernel_shape"])), tuple(pads[:2]),
                  ceil_mode=bool(a.get("ceil_mode", 0)), **extra)
    return run


OPS = {
    "Conv": _conv,
    "QuantizeLinear": _quantize_linear,
    "DequantizeLinear": _dequantize_linear,
    "Add": lambda args, a: args[0] + args[1],
    "Sub": lambda args, a: args[0] - args[1],
    "Mul": lambda args, a: args[0] * args[1],
    "Div": lambda args, a: args[0] / args[1],
    "Relu": lambda args, a: F.relu(args[0]),
    "Sigmoid": lambda args, a: torch.sigmoid(args[0]),
    "Clip": _clip,
    "Slice": _slice,
    "Concat": lambda args, a: torch.cat(args, dim=a["axis"]),
    "InstanceNormalization": lambda args, a: F.instance_norm(args[0], weight=args[1], bias=args[2],
                                                             eps=a.get("epsilon", 1e-5)),
    "BatchNormalization": _batch_norm,
    "GlobalAveragePool": lambda args, a: args[0].mean(dim=tuple(range(2, args[0].dim())), keepdim=True),
    "MaxPool": _pool("MaxPool"),
    "AveragePool": _pool("AveragePool"),
    "Flatten": lambda args, a: args[0].reshape(math.prod(args[0].shape[:a.get("axis", 1)]), -1),
    "Reshape": lambda args, a: args[0].reshape([d or args[0].shape[i] for i, d in enumerate(_ints(args[1]))]),
    "Identity": lambda args, a: args[0],
    "Gemm": _gemm,
    "MatMul": lambda args, a: args[0] @ args[1],
    "ReduceL2": _reduce_l2,
    "Shape": lambda args, a: torch.tensor(args[0].shape, dtype=torch.int64),
    "Expand": _expand,
    "Constant": _constant,
}
