"""Build a YOLOv8-face ONNX with NMS IN the graph from the raw-heads shared model.

The appended nodes do what Ultralytics' ``export(nms=True)`` does (ultralytics/ultralytics,
ultralytics/engine/exporter.py ``NMSModel.forward``; ``Detect.xyxy = True`` when exporting with
nms): decode boxes (DFL) and keypoints, keep candidates above a confidence, NMS, and return one
``[1, K, 6 + 15]`` tensor of rows x1, y1, x2, y2, score, class, 5 x (x, y, visibility) in input
pixels. The decoding facts are the model's (ASSETS.md, "other detector families"). Here the
rows are not zero-padded to max_det (ONNX NonMaxSuppression returns only the kept boxes); the
decoder ignores padding rows either way.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def build(src: Path, dst: Path, heads: tuple[str, ...] = ("output0", "884", "892"), strides=(8, 16, 32),
          size: int = 640, conf: float = 0.25, iou: float = 0.5, max_det: int = 300) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    m = onnx.load(str(src))
    g = m.graph
    cells, anchor, stride_row = [], [], []
    for s in strides:
        n = size // s
        ys, xs = np.mgrid[:n, :n]
        c = np.stack([xs.reshape(-1), ys.reshape(-1)]).astype(np.float32)
        cells.append(c)
        anchor.append(c + 0.5)
        stride_row.append(np.full((1, n * n), s, np.float32))
    consts = {
        "nms_cell": np.concatenate(cells, 1)[None, None],           # [1,1,2,8400]
        "nms_anchor": np.concatenate(anchor, 1)[None],              # [1,2,8400]
        "nms_stride": np.concatenate(stride_row, 1)[None],          # [1,1,8400]
        "nms_bins": np.arange(16, dtype=np.float32),
        "nms_shape_flat": np.array([1, 80, -1], np.int64),
        "nms_shape_dfl": np.array([1, 4, 16, -1], np.int64),
        "nms_shape_kps": np.array([1, 5, 3, -1], np.int64),
        "nms_shape_kps_flat": np.array([1, 15, -1], np.int64),
        "nms_two": np.array(2.0, np.float32),
        "nms_max": np.array([max_det], np.int64),
        "nms_iou": np.array([iou], np.float32),
        "nms_conf": np.array([conf], np.float32),
        "nms_zero_i": np.array([0], np.int64), "nms_two_i": np.array([2], np.int64),
        "nms_three_i": np.array([3], np.int64),
        "nms_64": np.array([64], np.int64), "nms_65": np.array([65], np.int64), "nms_80": np.array([80], np.int64),
        "nms_ax1": np.array([1], np.int64), "nms_ax2": np.array([2], np.int64),
    }
    nodes = []

    def node(op, ins, outs, **kw):
        nodes.append(helper.make_node(op, ins, outs, **kw))
        return outs[0]

    flat = [node("Reshape", [h, "nms_shape_flat"], [f"nms_flat{i}"]) for i, h in enumerate(heads)]
    p = node("Concat", flat, ["nms_p"], axis=2)                                              # [1,80,8400]
    box = node("Slice", [p, "nms_zero_i", "nms_64", "nms_ax1"], ["nms_box_raw"])
    # opset 11 Softmax flattens from its axis on: put the 16 bins last
    dfl = node("Transpose", [node("Reshape", [box, "nms_shape_dfl"], ["nms_dfl_in"])], ["nms_dfl_t"], perm=[0, 1, 3, 2])
    dfl = node("Softmax", [dfl], ["nms_dfl_p"], axis=3)                                      # [1,4,8400,16]
    dist = node("ReduceSum", [node("Mul", [dfl, "nms_bins"], ["nms_dfl_w"])], ["nms_dist"], axes=[3], keepdims=0)
    lt = node("Slice", [dist, "nms_zero_i", "nms_two_i", "nms_ax1"], ["nms_lt"])
    rb = node("Slice", [dist, "nms_two_i", "nms_80", "nms_ax1"], ["nms_rb"])
    x1y1 = node("Mul", [node("Sub", ["nms_anchor", lt], ["nms_a_lt"]), "nms_stride"], ["nms_x1y1"])
    x2y2 = node("Mul", [node("Add", ["nms_anchor", rb], ["nms_a_rb"]), "nms_stride"], ["nms_x2y2"])
    xyxy = node("Concat", [x1y1, x2y2], ["nms_xyxy"], axis=1)                                 # [1,4,8400]
    score = node("Sigmoid", [node("Slice", [p, "nms_64", "nms_65", "nms_ax1"], ["nms_logit"])], ["nms_score"])
    kraw = node("Reshape", [node("Slice", [p, "nms_65", "nms_80", "nms_ax1"], ["nms_kraw"]), "nms_shape_kps"],
                ["nms_k"])                                                                   # [1,5,3,8400]
    kxy = node("Slice", [kraw, "nms_zero_i", "nms_two_i", "nms_ax2"], ["nms_kxy"])
    kxy = node("Mul", [node("Add", [node("Mul", [kxy, "nms_two"], ["nms_k2"]), "nms_cell"], ["nms_kc"]),
                       "nms_stride"], ["nms_kpx"])
    kvis = node("Sigmoid", [node("Slice", [kraw, "nms_two_i", "nms_three_i", "nms_ax2"], ["nms_kv_raw"])], ["nms_kv"])
    kps = node("Reshape", [node("Concat", [kxy, kvis], ["nms_kcat"], axis=2), "nms_shape_kps_flat"], ["nms_kflat"])
    zeros = node("Mul", [score, node("Cast", ["nms_zero_i"], ["nms_zero_f"], to=TensorProto.FLOAT)], ["nms_cls"])
    rows = node("Concat", [xyxy, score, zeros, kps], ["nms_rows_t"], axis=1)                 # [1,21,8400]
    rows = node("Transpose", [rows], ["nms_rows"], perm=[0, 2, 1])                            # [1,8400,21]
    boxes = node("Transpose", [xyxy], ["nms_boxes"], perm=[0, 2, 1])                          # [1,8400,4]
    sel = node("NonMaxSuppression", [boxes, score, "nms_max", "nms_iou", "nms_conf"], ["nms_sel"])
    idx = node("Squeeze", [node("Slice", [sel, "nms_two_i", "nms_three_i", "nms_ax1"], ["nms_sel_i"])], ["nms_idx"],
               axes=[1])
    node("Gather", [rows, idx], ["detections"], axis=1)                                      # [1,K,21]
    g.node.extend(nodes)
    g.initializer.extend(numpy_helper.from_array(v, k) for k, v in consts.items())
    del g.output[:]
    g.output.append(helper.make_tensor_value_info("detections", TensorProto.FLOAT, [1, "k", 21]))
    onnx.save(m, str(dst))
    return dst
