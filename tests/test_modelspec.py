import json
import shutil

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
