"""Test double of the Hailo Dataflow Compiler's Python API (``hailo_sdk_client``).

Follows ``shared/reference/dfc_api.md``: ``ClientRunner(hw_arch=, har=)``, ``translate_onnx_model``
(start/end node names, ``net_input_shapes``), ``load_model_script`` (path or text, ``append``),
``optimize_full_precision``, ``optimize(calib)``, ``compile() -> bytes``, ``save_har``/``load_har``,
``infer_context(InferenceContext.X)`` + ``infer(ctx, NHWC)``. It computes real numbers with
onnxruntime: SDK_NATIVE runs the cut float graph (host-normalized input), SDK_FP_OPTIMIZED adds the
model script's normalization and output activations, SDK_QUANTIZED is onnxruntime static QDQ
quantization (uint8 activations, per-channel int8 weights) calibrated on the data given to
``optimize``, with ``a16_w16`` layers left in float. Layer names are numbered per kind (convN, dwN, fcN,
output_layerN) in the order Hailo's parser uses (see ``_har_names``), the network name has '.'
replaced by '_' as the DFC does, and ``get_hn()`` returns the parsed network as HN JSON.
The compiled "HEF" is a tagged container, not a Hailo binary.
Never import this outside tests.
"""

from __future__ import annotations

import contextlib
import json
import re
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import onnx
import onnx.version_converter
from onnx import TensorProto, helper, numpy_helper

from .exposed_definitions import InferenceContext, States

__version__ = "0.0.0+facefleet.double"
__all__ = ["ClientRunner", "InferenceContext", "States"]

HW_ARCHS = ("hailo8", "hailo8l", "hailo8r", "hailo10h", "hailo15h")
HEF_MAGIC = b"HEFDOUBLE1"
_COMMANDS = {"normalization", "change_output_activation", "quantization_param", "model_optimization_flavor",
             "model_optimization_config", "pre_quantization_optimization", "post_quantization_optimization",
             "performance_param", "compilation_param", "allocator_param", "resources_param", "input_conversion", "resize"}
_LINE = re.compile(r"^(?:(\w+)\s*=\s*)?(\w+)\((.*)\)$")
_HAR_NAME = re.compile(r"\b((?:conv|dw|fc|output_layer)\d+)\b")


class _Context:
    def __init__(self, kind: InferenceContext):
        self.kind = kind
        self.session = None


def _kind(n) -> str | None:
    if n.op_type == "Conv":
        group = next((a.i for a in n.attribute if a.name == "group"), 1)
        return "dw" if group > 1 else "conv"
    if n.op_type in ("Gemm", "MatMul"):
        return "fc"
    return None


def _har_names(graph) -> dict[str, str]:
    """node name -> HAR layer name, numbered per kind (convN, dwN, fcN) the way Hailo's parser does.

    The order is a depth-first walk from the input that numbers a node when it becomes ready
    (all its inputs numbered) and then descends into the LAST ready child first. Checked against
    Hailo's own names: it turns this repo's scrfd_2.5g raw-heads export (cut at Conv_134/135/137,
    158/159/161, 182/183/185) into exactly the zoo HEF's names: scores conv42/49/55, boxes
    conv43/50/56, landmarks conv44/51/57 (hailo_model_zoo cfg/alls/generic/scrfd_2.5g.alls;
    hailo-apps hailo_apps/postprocess/cpp/scrfd.cpp:33-51), where ONNX node order gives
    conv46/51/55. For scrfd_500m_kps it gives the zoo's per-stride blocks (25-27, 32-34, 38-40)
    and its stride-16/32 scores conv32/38. Plain chains (w600k_mbf) keep graph order.
    """
    nodes = [n for n in graph.node]
    key = {id(n): i for i, n in enumerate(nodes)}
    producer = {o: n for n in nodes for o in n.output}
    preds = {id(n): {id(producer[i]) for i in n.input if i in producer} for n in nodes}
    consumers: dict[int, list] = {id(n): [] for n in nodes}
    for n in nodes:
        for p in preds[id(n)]:
            consumers[p].append(n)
    indeg = {id(n): len(preds[id(n)]) for n in nodes}
    order, stack = [], []
    for n in nodes:
        if indeg[id(n)] == 0:
            order.append(n)
            stack.append(n)
    while stack:
        x = stack.pop()
        for c in sorted(consumers[id(x)], key=lambda n: key[id(n)]):
            indeg[id(c)] -= 1
            if indeg[id(c)] == 0:
                order.append(c)
                stack.append(c)
    counts = {"conv": 0, "dw": 0, "fc": 0}
    out = {}
    for n in order:
        kind = _kind(n)
        if kind is None:
            continue
        counts[kind] += 1
        out[n.name or n.output[0]] = f"{kind}{counts[kind]}"
    return out


def _hn_name(net_name: str) -> str:
    """The DFC's network name: the zoo parses ``scrfd_2.5g`` (cfg/networks/scrfd_2.5g.yaml
    network_name) and the HEF's vstreams are ``scrfd_2_5g/...`` (hailo-apps scrfd.cpp:33-51)."""
    return net_name.replace(".", "_")


def _split_args(text: str) -> list[str]:
    parts, depth, cur = [], 0, ""
    for ch in text:
        if ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur.strip())
            cur = ""
        else:
            cur += ch
    if cur.strip():
        parts.append(cur.strip())
    return parts


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.strip("[] ").split(",")]


class _Layer:
    def __init__(self, name: str, data: dict):
        self.name = name
        self.op = data["type"]
        self.output_shape = list(data["output_shapes"][0])
        self.original_names = list(data.get("original_names", []))
        self.scope = name.split("/")[0]


class _HailoNN:
    def __init__(self, hn: dict):
        self._hn = hn
        self._layers = {k: _Layer(k, v) for k, v in hn["layers"].items()}

    def get_layer_by_name(self, name: str) -> _Layer:
        return self._layers[name]

    def get_input_layers(self) -> list[_Layer]:
        return [x for x in self._layers.values() if x.op == "input_layer"]

    def get_output_layers(self, remove_non_neural_core_layers: bool = True) -> list[_Layer]:
        return [x for x in self._layers.values() if x.op == "output_layer"]

    def __iter__(self):
        return iter(self._layers.values())

    def predecessors(self, layer: _Layer) -> list[_Layer]:
        return [self._layers[n] for n in self._hn["layers"][layer.name]["input"]]


class ClientRunner:
    def __init__(self, hw_arch: str = "hailo8", har: str | None = None):
        if hw_arch not in HW_ARCHS:
            raise ValueError(f"Unsupported hw_arch {hw_arch}")
        self.hw_arch = hw_arch
        self.model_name: str | None = None
        self.state: States | None = None
        self._script_lines: list[str] = []
        self._float: onnx.ModelProto | None = None
        self._quant: bytes | None = None
        self._names: dict[str, str] = {}
        self._outputs: list[str] = []
        if har is not None:
            self.load_har(har)

    # ---- parse -------------------------------------------------------------------------------
    def translate_onnx_model(self, model, net_name=None, start_node_names=None, end_node_names=None,
                             net_input_shapes=None, **kwargs):
        proto = onnx.load(str(model))
        g = proto.graph
        inits = {i.name for i in g.initializer}
        graph_inputs = [i.name for i in g.input if i.name not in inits]
        nodes = {n.name: n for n in g.node if n.name}
        inputs = []
        for name in start_node_names or graph_inputs:
            if name in graph_inputs:
                inputs.append(name)
            elif name in nodes:
                inputs.append(nodes[name].input[0])
            else:
                raise ValueError(f"Unable to find start node {name} in the ONNX graph")
        outputs = []
        for name in end_node_names or [o.name for o in g.output]:
            if name in nodes:
                outputs.append(nodes[name].output[0])
            elif name in {o.name for o in g.output}:
                outputs.append(name)
            else:
                raise ValueError(f"Unable to find end node {name} in the ONNX graph")
        for name, shape in (net_input_shapes or {}).items():
            vi = next((i for i in g.input if i.name == name), None)
            if vi is None:
                raise ValueError(f"net_input_shapes: {name} is not an input")
            dims = vi.type.tensor_type.shape.dim
            for d, v in zip(dims, shape, strict=True):
                d.ClearField("dim_param")
                d.dim_value = int(v)
            dims[0].dim_param = "batch"  # the emulator takes batches
        with tempfile.TemporaryDirectory() as tmp:
            src, dst = Path(tmp) / "in.onnx", Path(tmp) / "cut.onnx"
            onnx.save(proto, src)
            onnx.utils.extract_model(str(src), str(dst), inputs, outputs, check_model=False)
            cut = onnx.load(str(dst))
        opset = next((o.version for o in cut.opset_import if o.domain in ("", "ai.onnx")), 13)
        # per-channel QDQ needs opset >= 13 (DequantizeLinear axis)
        self._float = onnx.version_converter.convert_version(cut, 13) if opset < 13 else cut
        self.model_name = _hn_name(net_name or Path(str(model)).stem)
        self._names = _har_names(self._float.graph)
        self._outputs = outputs
        self._script_lines = []
        self._quant = None
        self.state = States.HAILO_MODEL
        return self.get_hn_model(), {i.name: numpy_helper.to_array(i) for i in self._float.graph.initializer}

    def get_hn_model(self) -> _HailoNN:
        """The parsed network (``HailoNN``) with the calls the zoo makes on it:
        ``get_output_layers(remove_non_neural_core_layers=False)`` / ``.output_shape``
        (hailo_model_zoo core/main_utils.py _get_output_shapes), ``get_input_layers()``,
        ``get_layer_by_name`` (hn_editor/activations_changer.py), ``predecessors``."""
        return _HailoNN(self.get_hn())

    def get_hn(self) -> dict:
        """The parsed network as HN JSON: ``layers`` by ``net/name`` with ``type``, ``input``,
        ``output``, ``output_shapes`` (NHWC, batch -1) and ``original_names`` (the ONNX nodes)."""
        from onnx import shape_inference

        g = shape_inference.infer_shapes(self._float).graph
        dims = {}
        for vi in [*g.value_info, *g.input, *g.output]:
            dims[vi.name] = [d.dim_value or -1 for d in vi.type.tensor_type.shape.dim]

        def nhwc(tensor: str) -> list[int]:
            d = dims.get(tensor, [])
            return [-1, d[2], d[3], d[1]] if len(d) == 4 else [-1, *d[1:]]

        net = self.model_name
        producer = {o: (n.name or n.output[0]) for n in g.node for o in n.output}
        layers = {}
        inp = next(i.name for i in g.input if i.name not in {x.name for x in g.initializer})
        layers[f"{net}/input_layer1"] = {"type": "input_layer", "input": [], "output": [],
                                        "output_shapes": [nhwc(inp)], "original_names": [inp]}
        for node_name, har in self._names.items():
            node = next(n for n in g.node if (n.name or n.output[0]) == node_name)
            layers[f"{net}/{har}"] = {"type": "conv" if har.startswith(("conv", "dw")) else "dense", "input": [],
                                      "output": [], "output_shapes": [nhwc(node.output[0])],
                                      "original_names": [node_name]}
        for i, tensor in enumerate(self._outputs, 1):
            src = self._names.get(producer.get(tensor, ""))
            cur = tensor
            while src is None:  # an end node that is not a weight layer (the zoo's bbox Mul, a BN): fused into
                node = next(n for n in g.node if cur in n.output)  # the weight layer before it, as the DFC does
                cur = next(x for x in node.input if x in producer)
                src = self._names.get(producer[cur])
            layers[f"{net}/output_layer{i}"] = {"type": "output_layer", "input": [f"{net}/{src}"], "output": [],
                                                "output_shapes": [nhwc(tensor)], "original_names": [tensor]}
            layers[f"{net}/{src}"]["output"].append(f"{net}/output_layer{i}")
        return {"name": net, "layers": layers}

    # ---- model script ----------------------------------------------------------------------
    @property
    def model_script(self) -> str:
        return "\n".join(self._script_lines)

    def load_model_script(self, model_script, append: bool = False) -> None:
        self._require(States.HAILO_MODEL, States.FP_OPTIMIZED_MODEL)
        text = str(model_script)
        if "\n" not in text and "(" not in text and Path(text).is_file():  # a .alls path, else the script text
            text = Path(text).read_text()
        known = set(self._names.values()) | {f"output_layer{i}" for i in range(1, len(self._outputs) + 1)}
        lines = []
        for raw in text.splitlines():
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            m = _LINE.match(line)
            if not m or m.group(2) not in _COMMANDS:
                raise ValueError(f"Model script parse error: {line}")
            for ref in _HAR_NAME.findall(m.group(3)):
                if ref not in known:
                    raise ValueError(f"Model script: layer {ref} does not exist in {self.model_name}")
            if m.group(2) == "change_output_activation":
                layer = _split_args(m.group(3))[0]
                outputs = {x.split("/", 1)[1] for v in self.get_hn()["layers"].values() if v["type"] == "output_layer"
                           for x in v["input"]}
                if layer not in outputs:  # the command changes an OUTPUT layer's activation
                    raise ValueError(f"Model script: change_output_activation: {layer} is not an output layer of "
                                     f"{self.model_name} (outputs: {sorted(outputs)})")
            lines.append(line)
        self._script_lines = ([*self._script_lines, *lines]) if append else lines

    def _commands(self, name: str) -> list[list[str]]:
        out = []
        for line in self._script_lines:
            m = _LINE.match(line)
            if m and m.group(2) == name:
                out.append(_split_args(m.group(3)))
        return out

    # ---- optimize --------------------------------------------------------------------------
    def _fp_optimized(self) -> onnx.ModelProto:
        """The cut float graph with the script's normalization (NHWC raw pixels in) and activations."""
        m = onnx.ModelProto()
        m.CopyFrom(self._float)
        g = m.graph
        orig = g.input[0]
        dims = [d.dim_value or d.dim_param for d in orig.type.tensor_type.shape.dim]
        n, c, h, w = dims
        new_in = helper.make_tensor_value_info("hailo_input", TensorProto.FLOAT, [n, h, w, c])
        nodes = [helper.make_node("Transpose", ["hailo_input"], ["hailo_nchw"], perm=[0, 3, 1, 2])]
        cur = "hailo_nchw"
        norm = self._commands("normalization")
        if norm:
            mean = np.array(_floats(norm[0][0]), np.float32).reshape(1, 3, 1, 1)
            std = np.array(_floats(norm[0][1]), np.float32).reshape(1, 3, 1, 1)
            g.initializer.extend([numpy_helper.from_array(mean, "hailo_mean"), numpy_helper.from_array(1 / std, "hailo_istd")])
            nodes += [helper.make_node("Sub", [cur, "hailo_mean"], ["hailo_c"]),
                      helper.make_node("Mul", ["hailo_c", "hailo_istd"], ["hailo_n"])]
            cur = "hailo_n"
        nodes.append(helper.make_node("Identity", [cur], [orig.name]))
        g.input.remove(orig)
        g.input.insert(0, new_in)
        for node in reversed(nodes):
            g.node.insert(0, node)
        by_har = {v: k for k, v in self._names.items()}
        for args in self._commands("change_output_activation"):
            layer, act = args[0], args[1]
            node = next(x for x in g.node if (x.name or x.output[0]) == by_har[layer])
            op = {"sigmoid": "Sigmoid", "relu": "Relu", "tanh": "Tanh", "exp": "Exp"}.get(act)
            if op is None:
                continue
            pre = node.output[0] + "_preact"
            old = node.output[0]
            node.output[0] = pre
            g.node.append(helper.make_node(op, [pre], [old], name=f"{layer}_{act}"))
        onnx.checker.check_model(m)
        return m

    def _a16_nodes(self) -> list[str]:
        by_har = {v: k for k, v in self._names.items()}
        out = []
        for args in self._commands("quantization_param"):
            if not any("a16_w16" in a for a in args[1:]):
                continue
            for layer in _HAR_NAME.findall(args[0]):
                if layer.startswith("output_layer"):
                    tensor = self._outputs[int(layer.removeprefix("output_layer")) - 1]
                    out += [n.name for n in self._float.graph.node if tensor in n.output and n.name]
                elif layer in by_har:
                    out.append(by_har[layer])
        return out

    def optimize_full_precision(self, calib_data=None) -> None:
        self._require(States.HAILO_MODEL, States.FP_OPTIMIZED_MODEL)
        self._fp_optimized()
        self.state = States.FP_OPTIMIZED_MODEL

    def optimize(self, calib_data, work_dir=None, **kwargs) -> None:
        from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

        self._require(States.HAILO_MODEL, States.FP_OPTIMIZED_MODEL)
        data = np.asarray(calib_data)
        dims = [d.dim_value for d in self._float.graph.input[0].type.tensor_type.shape.dim]
        want = (dims[2], dims[3], dims[1])
        if data.ndim != 4 or tuple(data.shape[1:]) != want:
            raise ValueError(f"Calibration data shape {data.shape} does not match the network input (N, {want})")

        class Reader(CalibrationDataReader):
            def __init__(self):
                self.it = iter(data)

            def get_next(self):
                x = next(self.it, None)
                return None if x is None else {"hailo_input": x[None].astype(np.float32)}

        with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
            fp, q = Path(tmp) / "fp.onnx", Path(tmp) / "q.onnx"
            onnx.save(self._fp_optimized(), fp)
            quantize_static(str(fp), str(q), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            nodes_to_exclude=self._a16_nodes())
            self._quant = q.read_bytes()
        self.state = States.QUANTIZED_MODEL

    # ---- compile / har ---------------------------------------------------------------------
    def compile(self) -> bytes:
        self._require(States.QUANTIZED_MODEL)
        header = json.dumps({"net": self.model_name, "hw_arch": self.hw_arch, "outputs": self._outputs,
                             "script": self.model_script}).encode()
        self.state = States.COMPILED_MODEL
        return HEF_MAGIC + len(header).to_bytes(4, "little") + header + self._quant

    def save_har(self, har_path) -> None:
        with zipfile.ZipFile(har_path, "w") as z:
            z.writestr("meta.json", json.dumps({"net": self.model_name, "hw_arch": self.hw_arch, "state": self.state.value,
                                                "script": self._script_lines, "names": self._names, "outputs": self._outputs}))
            z.writestr("float.onnx", self._float.SerializeToString())
            if self._quant is not None:
                z.writestr("quant.onnx", self._quant)

    def load_har(self, har=None) -> None:
        with zipfile.ZipFile(har) as z:
            meta = json.loads(z.read("meta.json"))
            self._float = onnx.load_from_string(z.read("float.onnx"))
            self._quant = z.read("quant.onnx") if "quant.onnx" in z.namelist() else None
        self.model_name, self.hw_arch = meta["net"], meta["hw_arch"]
        self.state, self._script_lines = States(meta["state"]), meta["script"]
        self._names, self._outputs = meta["names"], meta["outputs"]

    # ---- inference -------------------------------------------------------------------------
    @contextlib.contextmanager
    def infer_context(self, context: InferenceContext):
        import onnxruntime as ort

        if context == InferenceContext.SDK_HAILO_HW:
            raise RuntimeError("No Hailo device (double)")
        if context == InferenceContext.SDK_QUANTIZED and self._quant is None:
            raise RuntimeError("SDK_QUANTIZED needs an optimized (quantized) model")
        model = {InferenceContext.SDK_NATIVE: lambda: self._float.SerializeToString(),
                 InferenceContext.SDK_FP_OPTIMIZED: lambda: self._fp_optimized().SerializeToString(),
                 InferenceContext.SDK_QUANTIZED: lambda: self._quant}[context]()
        ctx = _Context(context)
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        ctx.session = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
        try:
            yield ctx
        finally:
            ctx.session = None

    def infer(self, context: _Context, dataset, batch_size: int = 8, **kwargs):
        data = next(iter(dataset.values())) if isinstance(dataset, dict) else dataset
        data = np.asarray(data, np.float32)
        if context.kind == InferenceContext.SDK_NATIVE:
            data = data.transpose(0, 3, 1, 2)  # native graph: NCHW, host-normalized
        name = context.session.get_inputs()[0].name
        outs = context.session.run(self._outputs, {name: data})
        outs = [o.transpose(0, 2, 3, 1) if o.ndim == 4 else o for o in outs]  # the chip's NHWC
        return outs[0] if len(outs) == 1 else outs

    def _require(self, *states: States) -> None:
        if self.state not in states:
            raise RuntimeError(f"Runner is in state {self.state}, expected one of {[s.value for s in states]}")


def read_hef(data: bytes) -> tuple[dict, bytes]:
    """For tests: the header and quantized model inside a double's HEF."""
    if not data.startswith(HEF_MAGIC):
        raise ValueError("not a double HEF")
    n = int.from_bytes(data[len(HEF_MAGIC):len(HEF_MAGIC) + 4], "little")
    start = len(HEF_MAGIC) + 4
    return json.loads(data[start:start + n]), data[start + n:]

