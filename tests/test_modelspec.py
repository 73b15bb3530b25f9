import json
import shutil

import numpy as np
import pytest

from facefleet.errors import FacefleetError
from facefleet.modelspec import load_catalog, resolve_model, sha256_file


def test_catalog_covers_every_shared_model(assets):
    files = sorted((assets / "models").glob("*.onnx"))
    assert len(files) == 10
    for f in files:
        r = resolve_model(f)
        assert r.spec.sha256 == sha256_file(f)
        assert r.spec.file == f.name


def test_normalizations_are_data(assets):
    by_name = {s.name: s for s in load_catalog()}
    w600k = by_name["w600k_mbf_fp32"].normalization
    mfn = by_name["mobilefacenet_128"].normalization
    assert w600k.mean == (127.5, 127.5, 127.5) and w600k.std == (127.5, 127.5, 127.5)
    assert mfn.mean[0] == pytest.approx(0.485 * 255) and mfn.std[2] == pytest.approx(0.225 * 255)
    raw = by_name["scrfd_2.5g_rawheads"].detector
    assert raw.layout == "raw_heads" and raw.scores_are_logits
    assert raw.bbox_scales == (0.8807, 0.9315, 1.1424)
    assert by_name["det_500m"].input.width is None  # dynamic input size


def test_sidecar_wins_and_sha_is_checked(tmp_path, model_path):
    src = model_path("w600k_mbf_fp32")
    dst = tmp_path / "my_rec.onnx"
    shutil.copy(src, dst)
    spec = resolve_model(src).spec.model_dump(mode="json")
    spec.update(name="my_rec", file="my_rec.onnx")
    (tmp_path / "my_rec.json").write_text(json.dumps(spec))
    assert resolve_model(dst).spec.name == "my_rec"
    spec["sha256"] = "0" * 64
    (tmp_path / "my_rec.json").write_text(json.dumps(spec))
    with pytest.raises(FacefleetError, match="does not match its spec"):
        resolve_model(dst)


def test_unknown_model_and_wrong_kind(tmp_path, model_path):
    f = tmp_path / "mystery.onnx"
    f.write_bytes(b"not a model")
    with pytest.raises(FacefleetError, match=r"no model spec for mystery\.onnx"):
        resolve_model(f)
    with pytest.raises(FacefleetError, match="is a recognizer, expected a detector"):
        resolve_model(model_path("w600k_mbf_fp32"), kind="detector")
    with pytest.raises(FacefleetError, match="model file not found"):
        resolve_model(tmp_path / "absent.onnx")


def test_invalid_sidecar_is_one_clear_error(tmp_path, model_path):
    dst = tmp_path / "rec.onnx"
    shutil.copy(model_path("w600k_mbf_fp32"), dst)
    spec = resolve_model(model_path("w600k_mbf_fp32")).spec.model_dump(mode="json")
    spec["recognizer"]["match_threshold"] = 3.0
    (tmp_path / "rec.json").write_text(json.dumps(spec))
    with pytest.raises(FacefleetError, match=r"recognizer\.match_threshold"):
        resolve_model(dst)


# --- one-line errors for every spec problem (issue 14, item 4) -------------------------------

def _sidecar_copy(tmp_path, model_path, name: str, stem: str, **changes):
    dst = tmp_path / f"{stem}.onnx"
    shutil.copy(model_path(name), dst)
    spec = resolve_model(model_path(name)).spec.model_dump(mode="json")
    spec.update(name=stem, file=dst.name, sha256=None)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(spec.get(key), dict):
            spec[key] = {**spec[key], **value}
        else:
            spec[key] = value
    (tmp_path / f"{stem}.json").write_text(json.dumps(spec))
    return dst


def _one_line_error(fn, match: str) -> str:
    with pytest.raises(FacefleetError, match=match) as e:
        fn()
    assert "\n" not in str(e.value)
    return str(e.value)


def test_unknown_detector_layout_names_the_known_ones(tmp_path, model_path):
    m = _sidecar_copy(tmp_path, model_path, "yunet_2023mar", "y", detector={"layout": "yunett"})
    msg = _one_line_error(lambda: resolve_model(m), r"detector: Input tag 'yunett'")
    assert "'yunet'" in msg and "'retinaface'" in msg and "'yolov8_face'" in msg


def test_family_fields_are_checked(tmp_path, model_path):
    m = _sidecar_copy(tmp_path, model_path, "yunet_2023mar", "y", detector={"obj": None})
    _one_line_error(lambda: resolve_model(m), r"invalid model spec .*y\.json: detector\.obj: Input should be a valid tuple")
    m = _sidecar_copy(tmp_path, model_path, "retinaface_mobilenet0.25", "r",
                      detector={"outputs": "per_stride"})
    _one_line_error(lambda: resolve_model(m), r"detector: detector\.loc needs 3 output name\(s\) for outputs 'per_stride'")


def test_sidecar_that_names_another_file(tmp_path, model_path):
    m = _sidecar_copy(tmp_path, model_path, "w600k_mbf_fp32", "mine", file="theirs.onnx")
    _one_line_error(lambda: resolve_model(m), r"mine\.json describes 'theirs\.onnx', not 'mine\.onnx'")


def test_input_size_that_is_not_the_models(tmp_path, model_path, backend):
    from facefleet.recognition.models import Detector, Recognizer

    m = _sidecar_copy(tmp_path, model_path, "yunet_2023mar", "y", input={"width": 320, "height": 320})
    _one_line_error(lambda: Detector(backend.load(resolve_model(m))),
                    r"spec input.width 320, the model's input is 640x640")
    m = _sidecar_copy(tmp_path, model_path, "mobilefacenet_128", "mfn", input={"width": 128, "height": 128})
    _one_line_error(lambda: Recognizer(backend.load(resolve_model(m))),
                    r"spec input.width 128, the model's input is 112x112")


def test_input_dtype_that_is_not_the_models(tmp_path, model_path, backend):
    m = _sidecar_copy(tmp_path, model_path, "yunet_2023mar", "y", input={"dtype": "uint8"}, normalization=None)
    _one_line_error(lambda: backend.load(resolve_model(m)), r"spec input.dtype uint8, the ONNX input 'input' takes float")


@pytest.mark.parametrize(("name", "detector", "needle"), [
    ("yunet_2023mar", {"cls": ["cls_8", "cls_16", "cls_64"]}, r"output 'cls_64' named by its spec is missing"),
    ("retinaface_mobilenet0.25", {"landmarks": ["kps"]}, r"output 'kps' named by its spec is missing"),
    ("yolov8_lite_t_face", {"heads": ["884", "output0", "892"]}, r"output '884' has shape \[1, 80, 40, 40\]"),
])
def test_missing_or_misnamed_outputs(tmp_path, model_path, backend, name, detector, needle):
    from facefleet.recognition.models import Detector

    m = _sidecar_copy(tmp_path, model_path, name, "x", detector=detector)
    _one_line_error(lambda: Detector(backend.load(resolve_model(m))), needle)


# --- embedding caches keyed by the spec too (issue 14, item 3) -------------------------------

def test_a_corrected_sidecar_re_embeds_the_gallery(tmp_path, model_path, backend, people):
    """Same model file, preprocessing corrected in place: the gallery must not serve the
    templates embedded with the old preprocessing."""
    from facefleet.recognition.gallery import Gallery
    from facefleet.recognition.loader import gallery_index
    from facefleet.recognition.models import Recognizer

    labels, crops = people
    g = Gallery.open(tmp_path / "g", create=True)
    for name in sorted(set(labels.tolist()))[:3]:
        g.add(name, list(crops[labels == name][:2]))
    m = _sidecar_copy(tmp_path, model_path, "w600k_mbf_fp32", "rec", normalization={"mean": [0, 0, 0], "std": [1, 1, 1]})
    wrong = gallery_index(g, Recognizer(backend.load(resolve_model(m))))
    spec = json.loads(m.with_suffix(".json").read_text())
    spec["normalization"] = {"mean": [127.5] * 3, "std": [127.5] * 3}  # the operator fixes the sidecar
    m.with_suffix(".json").write_text(json.dumps(spec))
    fixed_rec = Recognizer(backend.load(resolve_model(m)))
    fixed = gallery_index(g, fixed_rec)
    fresh = g.index_for(fixed_rec.fingerprint, lambda c: fixed_rec.embed(c)[0], use_cache=False)
    assert fixed.fingerprint == wrong.fingerprint  # same file
    np.testing.assert_allclose(fixed.templates, fresh.templates, atol=1e-5)
    assert not np.allclose(fixed.templates, wrong.templates, atol=1e-2)
