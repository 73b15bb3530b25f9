"""onnxruntime backend (CPU).

At load time the graph gets a uint8 NHWC BGR input and the model's own preprocessing
(colour swap, normalization, layout) as graph nodes, so an ONNX model takes exactly what a
HEF takes and onnxruntime does the arithmetic in its optimized kernels.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from facefleet.errors import FacefleetError
from facefleet.modelspec import ModelSpec, ResolvedModel

log = logging.getLogger(__name__)

_INPUT = "facefleet_bgr_u8"


def _import():
    try:
        import onnx
        import onnxruntime as ort
    except ImportError as e:  # pragma: no cover - depends on the install
        raise FacefleetError(f"the onnx backend needs onnxruntime and onnx: pip install 'facefleet[onnx]' ({e})") from None
    return onnx, ort


def _prepend_preprocessing(model, spec: ModelSpec):
    """Rewrite ``model`` so its input is uint8 NHWC BGR and preprocessing runs in-graph."""
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    inits = {i.name for i in graph.initializer}
    real_inputs = [i for i in graph.input if i.name not in inits]
    names = [i.name for i in real_inputs]
    if spec.input.name not in names:
        raise FacefleetError(f"model {spec.name}: input {spec.input.name!r} not in the ONNX inputs {names}")
    if len(real_inputs) != 1:
        raise FacefleetError(f"model {spec.name}: expected one input, found {names}")
    orig = real_inputs[0]
    want = {"float32": TensorProto.FLOAT, "uint8": TensorProto.UINT8}[spec.input.dtype]
    have = orig.type.tensor_type.elem_type
    if have != want:
        raise FacefleetError(f"model {spec.name}: spec input.dtype {spec.input.dtype}, the ONNX input {orig.name!r} "
                             f"takes {TensorProto.DataType.Name(have).lower()}")
    dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in orig.type.tensor_type.shape.dim]
    if len(dims) != 4:
        raise FacefleetError(f"model {spec.name}: input {orig.name} has rank {len(dims)}, expected 4")
    if spec.input.layout == "NCHW":
        n, _, h, w = dims
    else:
        n, h, w, _ = dims
    new_input = helper.make_tensor_value_info(_INPUT, TensorProto.UINT8, [n or "batch", h or "height", w or "width", 3])
    # Layout and colour are moved on uint8 (a quarter of the bytes), then cast and normalized:
    # ~0.5 ms for a 640x384 frame where cast-first costs ~7 ms.
    nodes, consts, cur = [], [], _INPUT
    chan_axis = 3
    if spec.input.layout == "NCHW":
        nodes.append(helper.make_node("Transpose", [cur], ["ff_nchw"], perm=[0, 3, 1, 2]))
        cur, chan_axis = "ff_nchw", 1
    if spec.input.color == "RGB":
        consts.append(numpy_helper.from_array(np.array([2, 1, 0], np.int64), "ff_rgb_idx"))
        nodes.append(helper.make_node("Gather", [cur, "ff_rgb_idx"], ["ff_rgb"], axis=chan_axis))
        cur = "ff_rgb"
    if spec.input.dtype == "float32":
        nodes.append(helper.make_node("Cast", [cur], ["ff_float"], to=TensorProto.FLOAT))
        cur = "ff_float"
    if spec.normalization is not None:
        shape = (1, 3, 1, 1) if chan_axis == 1 else (1, 1, 1, 3)
        mean = np.array(spec.normalization.mean, np.float32).reshape(shape)
        inv_std = (1.0 / np.array(spec.normalization.std, np.float32)).reshape(shape)
        consts += [numpy_helper.from_array(mean, "ff_mean"), numpy_helper.from_array(inv_std, "ff_inv_std")]
        nodes.append(helper.make_node("Sub", [cur, "ff_mean"], ["ff_centered"]))
        cur = "ff_centered"
        nodes.append(helper.make_node("Mul", [cur, "ff_inv_std"], ["ff_norm"]))
        cur = "ff_norm"
    nodes.append(helper.make_node("Identity", [cur], [orig.name]))
    graph.input.remove(orig)
    graph.input.insert(0, new_input)
    for node in reversed(nodes):
        graph.node.insert(0, node)
    graph.initializer.extend(consts)
    return model


class OnnxModel:
    def __init__(self, spec: ModelSpec, session, max_batch: int | None, fixed: tuple[int | None, int | None]):
        self.spec = spec
        self._session = session
        self._max_batch = max_batch
        self._fixed = fixed
        self._outputs = [o.name for o in session.get_outputs()]
        self.infer_seconds = 0.0
        self.calls = 0

    def input_size(self) -> tuple[int | None, int | None]:
        return self._fixed

    @property
    def output_names(self) -> list[str]:
        return list(self._outputs)

    def output_shapes(self) -> dict[str, list]:
        return {o.name: list(o.shape) for o in self._session.get_outputs()}

    def run(self, images: np.ndarray) -> dict[str, np.ndarray]:
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"expected uint8 [n,h,w,3], got {images.dtype} {images.shape}")
        step = self._max_batch or len(images) or 1
        chunks = []
        t0 = time.perf_counter()
        for start in range(0, len(images), step):
            chunks.append(self._session.run(self._outputs, {_INPUT: images[start:start + step]}))
            self.calls += 1
        self.infer_seconds += time.perf_counter() - t0
        if len(chunks) == 1:
            return dict(zip(self._outputs, chunks[0], strict=True))
        return {name: np.concatenate([c[i] for c in chunks]) for i, name in enumerate(self._outputs)}

    def close(self) -> None:
        self._session = None


class OnnxBackend:
    """Runs ModelSpec'd ONNX models on onnxruntime's CPU provider."""

    name = "onnx"

    def __init__(self, threads: int = 0, providers: list[str] | None = None, spin: bool = False):
        self._threads = threads
        self._spin = spin
        self._providers = providers or ["CPUExecutionProvider"]

    def health(self) -> dict:
        """Nothing to report for the CPU (the Backend protocol's status hook)."""
        return {}

    def load(self, model: ResolvedModel) -> OnnxModel:
        onnx, ort = _import()
        spec = model.spec
        if spec.format != "onnx":
            raise FacefleetError(f"model {spec.name} is a {spec.format} file; the onnx backend runs ONNX")
        try:
            proto = onnx.load(str(model.path))
        except Exception as e:  # onnx raises DecodeError and friends for corrupt files
            raise FacefleetError(f"cannot read ONNX model {model.path}: {type(e).__name__}") from None
        proto = _prepend_preprocessing(proto, spec)
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        if not self._spin:
            # several sessions take turns on few cores: spinning threads of one steal the other's
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if self._threads:
            opts.intra_op_num_threads = self._threads
        try:
            session = ort.InferenceSession(proto.SerializeToString(), opts, providers=self._providers)
        except Exception as e:
            raise FacefleetError(f"onnxruntime cannot load {Path(model.path).name}: {str(e).splitlines()[0]}") from None
        dims = session.get_inputs()[0].shape
        n, h, w = dims[0], dims[1], dims[2]
        max_batch = n if isinstance(n, int) else spec.input.max_batch
        fixed = (w if isinstance(w, int) else None, h if isinstance(h, int) else None)
        loaded = OnnxModel(spec, session, max_batch, fixed)
        log.debug("loaded %s (%s) input=%s outputs=%s", spec.name, spec.fingerprint, dims, loaded.output_names)
        return loaded

    def close(self) -> None:
        pass


class Int8Scorer:
    """Coarse inner products of queries against a fixed matrix, int8 on onnxruntime's kernels.

    A large gallery is memory-bound in float32 (100k x 512 = 200 MB per scan); int8 reads a
    quarter of that. Rows are quantized per row; ``delta(q)`` bounds the error of every coarse
    score, so the caller can re-rank exactly and prove the result is the true top-k.
    """

    def __init__(self, matrix: np.ndarray, k: int):
        _, ort = _import()
        from onnx import TensorProto, helper, numpy_helper

        m = np.asarray(matrix, np.float32)
        scale = np.maximum(np.abs(m).max(axis=1), 1e-12) / 127.0
        q = np.clip(np.round(m / scale[:, None]), -127, 127).astype(np.int8)
        deq = q.astype(np.float32) * scale[:, None]
        self.row_err = float(np.linalg.norm(m - deq, axis=1).max())
        self.row_norm = float(np.linalg.norm(deq, axis=1).max())
        self.k = min(k, len(m))
        d = m.shape[1]
        nodes = [
            helper.make_node("MatMulInteger", ["q", "gallery", "q_zero"], ["acc"]),
            helper.make_node("Cast", ["acc"], ["accf"], to=TensorProto.FLOAT),
            helper.make_node("Mul", ["accf", "row_scale"], ["scores"]),
            helper.make_node("TopK", ["scores", "k"], ["top_scores", "top_idx"], axis=1, largest=1, sorted=1),
        ]
        inits = [
            numpy_helper.from_array(np.ascontiguousarray(q.T), "gallery"),
            numpy_helper.from_array(np.array(128, np.uint8), "q_zero"),
            numpy_helper.from_array(scale.astype(np.float32)[None, :], "row_scale"),
            numpy_helper.from_array(np.array([self.k], np.int64), "k"),
        ]
        graph = helper.make_graph(
            nodes, "facefleet_int8_scorer",
            [helper.make_tensor_value_info("q", TensorProto.UINT8, ["n", d])],
            [helper.make_tensor_value_info("top_scores", TensorProto.FLOAT, ["n", self.k]),
             helper.make_tensor_value_info("top_idx", TensorProto.INT64, ["n", self.k])],
            inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
        model.ir_version = min(model.ir_version, 9)
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        self._session = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])

    def topk(self, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(indices ``[n,K]``, coarse scores ``[n,K]`` already scaled by the query scale, error bound ``[n]``)."""
        q = np.asarray(queries, np.float32)
        qs = np.maximum(np.abs(q).max(axis=1), 1e-12) / 127.0
        qi = np.clip(np.round(q / qs[:, None]), -127, 127)
        q_err = np.linalg.norm(q - qi * qs[:, None], axis=1)
        scores, idx = self._session.run(None, {"q": (qi + 128).astype(np.uint8)})
        delta = self.row_err * np.linalg.norm(q, axis=1) + self.row_norm * q_err
        return idx, scores * qs[:, None], delta
