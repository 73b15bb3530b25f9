"""``facefleet models check``: a spec is proven on photos of real people before it ships."""

from __future__ import annotations

import json
import shutil

import cv2
import pytest

from facefleet.cli import main
from facefleet.modelspec import resolve_model


@pytest.fixture(scope="module")
def faces(assets, tmp_path_factory):
    """faces/people, 6 people x up to 3 photos, downscaled to 640 px (the check reads every
    photo once per candidate preprocessing: keep the test fast)."""
    root = tmp_path_factory.mktemp("people")
    for person in sorted((assets / "faces" / "people").iterdir())[:6]:
        (root / person.name).mkdir()
        for f in sorted(person.glob("*.jpg"))[:3]:
            img = cv2.imread(str(f))
            s = min(1.0, 640 / max(img.shape[:2]))
            img = cv2.resize(img, None, fx=s, fy=s, interpolation=cv2.INTER_AREA) if s < 1 else img
            cv2.imwrite(str(root / person.name / f.name), img)
    return root


def _copy(assets, tmp_path, name: str, stem: str, **spec_changes):
    """The shared model under a new name, with a sidecar (the catalog's spec, changed)."""
    m = tmp_path / f"{stem}.onnx"
    shutil.copy(assets / "models" / f"{name}.onnx", m)
    spec = resolve_model(assets / "models" / f"{name}.onnx").spec.model_dump(mode="json")
    spec.update(name=stem, file=m.name, **spec_changes)
    m.with_suffix(".json").write_text(json.dumps(spec))
    return m


def test_recognizer_confirmed_threshold_from_own_people_written(assets, faces, tmp_path, capsys):
    m = _copy(assets, tmp_path, "w600k_mbf_fp32", "my_arcface")
    assert main(["models", "check", str(m), "--faces", str(faces), "--write", "--json"]) == 0
    out = capsys.readouterr().out
    report = json.loads(out[:out.rindex("}") + 1])
    assert report["refused"] == [] and report["confirmed"]
    t = report["threshold"]
    # above every stranger pair at this sample size, and above the closest pair of people
    assert t["recommended_match_threshold"] > t["highest_stranger"] >= 0
    assert t["recommended_match_threshold"] > t["closest_enrolled_pair"]["similarity"]
    assert 0.8 <= t["true_accept_rate"] <= 1.0
    spec = resolve_model(m).spec  # the sidecar now carries the findings
    assert spec.recognizer.match_threshold == t["recommended_match_threshold"]
    assert spec.provenance["models_check"]["threshold"]["stranger_pairs"] == t["stranger_pairs"]


def test_wrong_normalization_is_refused_and_the_right_one_named(assets, faces, tmp_path, capsys):
    """Raw 0-255 pixels into ArcFace: strangers at cosine ~0.9 (the issue's 0.89-0.99)."""
    m = _copy(assets, tmp_path, "w600k_mbf_fp32", "raw_arcface", normalization={"mean": [0, 0, 0], "std": [1, 1, 1]})
    before = m.with_suffix(".json").read_text()
    assert main(["models", "check", str(m), "--faces", str(faces), "--write"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "spec refused" in err[0] and "(x-127.5)/12" in err[0], err
    assert m.with_suffix(".json").read_text() == before  # nothing written


def test_detector_checked_per_photo(assets, faces, tmp_path, capsys):
    m = _copy(assets, tmp_path, "yunet_2023mar", "my_yunet")
    assert main(["models", "check", str(m), "--faces", str(faces), "--write"]) == 0
    out = capsys.readouterr().out
    assert "confirmed" in out
    check = resolve_model(m).spec.provenance["models_check"]
    assert check["detections"]["sane"] >= 0.9 * check["photos"]


def test_yunet_described_as_scrfd_is_refused(assets, faces, tmp_path, capsys):
    """The issue's case: a best-effort SCRFD spec for YuNet passes the load self-test (the
    output sizes fit with one anchor per cell) and then finds hundreds of 'faces'."""
    spec = resolve_model(assets / "models" / "yunet_2023mar.onnx").spec.detector
    m = _copy(assets, tmp_path, "yunet_2023mar", "yunet_as_scrfd", sha256=None,
              detector={"layout": "decoded", "anchors_per_cell": 1, "scores": list(spec.cls), "bbox": list(spec.bbox),
                        "kps": list(spec.kps)})
    assert main(["models", "check", str(m), "--faces", str(faces)]) == 1
    err = capsys.readouterr().err
    assert "faces per portrait" in err and "detector.layout" in err


def test_detector_wrong_normalization_names_the_right_one(assets, faces, tmp_path, capsys):
    m = _copy(assets, tmp_path, "yolov8_lite_t_face", "yolo_raw", normalization={"mean": [0, 0, 0], "std": [1, 1, 1]})
    assert main(["models", "check", str(m), "--faces", str(faces)]) == 1
    err = capsys.readouterr().err
    assert "spec refused" in err and "x/255" in err and "the preprocessing does not fit" in err


def test_bad_faces_folder_is_one_line(assets, tmp_path, capsys):
    assert main(["models", "check", str(assets / "models" / "w600k_mbf_fp32.onnx"), "--faces", str(tmp_path)]) == 1
    assert "no photos" in capsys.readouterr().err
