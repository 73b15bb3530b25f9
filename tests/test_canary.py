"""Quality canary (issue 15.1) on the real models: probe sets built from the operator's photos,
checked against the served model; a wrong normalization fails with the figure that failed."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from canary_models import DET, FP32, INT8, canary_models
from facefleet.cloud.compiler.probes import tolerance_from_fidelity
from facefleet.cloud.publish import add_probe_artifacts, is_model
from facefleet.errors import FacefleetError
from facefleet.modelspec import resolve_model
from facefleet.recognition.canary import Canary, CanaryFailed, check_detector, check_recognizer, load_probes, probes_path
from facefleet.recognition.loader import ModelPair
from facefleet.recognition.models import Detector, Recognizer


@pytest.fixture(scope="module")
def models(tmp_path_factory, assets):
    return canary_models(tmp_path_factory.mktemp("canary"), assets)


def _rec(backend, path):
    return Recognizer(backend.load(resolve_model(path, kind="recognizer")))


def _det(backend, path):
    return Detector(backend.load(resolve_model(path, kind="detector")))


def test_probe_set_holds_crops_and_float_embeddings(models):
    p = load_probes(probes_path(models / INT8))
    assert p["crops"].shape == (4, 112, 112, 3) and p["crops"].dtype == np.uint8
    assert p["reference"].shape == (4, 512)
    assert str(p["reference_model"]) == "w600k_mbf_fp32" and str(p["model"]) == "w600k_mbf_int8dyn"
    assert len(set(p["labels"].tolist())) == 4  # round-robin over identities


@pytest.mark.parametrize("name", [FP32, INT8])
def test_good_recognizer_passes_with_figures(models, backend, name):
    r = check_recognizer(_rec(backend, models / name), load_probes(probes_path(models / name)))
    assert r.passed and r.failed is None
    assert r.figures["probes"] == 4 and r.figures["min_cosine"] <= r.figures["cos_min"] <= r.figures["cos_mean"] <= 1.0001


def test_int8_is_close_to_float_but_not_identical(models, backend):
    f = check_recognizer(_rec(backend, models / FP32), load_probes(probes_path(models / FP32)))
    q = check_recognizer(_rec(backend, models / INT8), load_probes(probes_path(models / INT8)))
    assert q.figures["cos_min"] < f.figures["cos_min"]


def test_wrong_normalization_fails_with_the_figure(models, backend):
    r = check_recognizer(_rec(backend, models / "wrong" / FP32), load_probes(probes_path(models / "wrong" / FP32)))
    assert not r.passed
    assert r.figures["cos_min"] < r.figures["min_cosine"]
    assert f"min {r.figures['cos_min']:.4f} < tolerance" in r.failed


def test_detector_passes_and_a_wrong_detector_normalization_fails(models, backend, tmp_path):
    probes = load_probes(probes_path(models / DET))
    good = check_detector(_det(backend, models / DET), probes)
    assert good.passed and good.figures["faces_served"] == good.figures["faces_float"] > 0
    (tmp_path / DET).symlink_to(models / DET)
    spec = resolve_model(models / DET).spec.model_dump(mode="json")
    spec["normalization"] = {"mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]}
    (tmp_path / "det_500m.json").write_text(json.dumps(spec))
    bad = check_detector(_det(backend, tmp_path / DET), probes)
    assert not bad.passed and "IoU" in bad.failed


def test_canary_refuses_the_pair_and_reports_the_figure(models, backend):
    pair = ModelPair(_det(backend, models / DET), _rec(backend, models / "wrong" / FP32))
    with pytest.raises(CanaryFailed, match=r"quality canary: recognizer .* probe cosine to the float model min"):
        Canary().check(pair, models / DET, models / "wrong" / FP32)
    good = ModelPair(pair.detector, _rec(backend, models / INT8))
    figs = Canary().check(good, models / DET, models / INT8)
    assert figs["recognizer"]["passed"] and figs["detector"]["passed"]


def test_no_probes_file_is_no_canary_warned_once(tmp_path, assets, backend, caplog):
    (tmp_path / FP32).symlink_to(assets / "models" / FP32)
    pair = ModelPair(_det(backend, assets / "models" / DET), _rec(backend, tmp_path / FP32))
    canary = Canary()
    with caplog.at_level(logging.WARNING, logger="facefleet.recognition.canary"):
        assert canary.check(pair, None, tmp_path / FP32) == {}
        assert canary.check(pair, None, tmp_path / FP32) == {}
    assert [r.getMessage() for r in caplog.records].count(
        "no probe set w600k_mbf_fp32.probes.npz: the recognizer is not canaried (facefleet build probes makes one)") == 1


def test_a_probe_set_of_another_model_or_no_probe_set_is_a_clear_error(models, backend, assets, tmp_path):
    mbf128 = _rec(backend, assets / "models" / "mobilefacenet_128.onnx")
    with pytest.raises(CanaryFailed, match="probe set is for 112 px crops / 512-d"):
        check_recognizer(mbf128, load_probes(probes_path(models / FP32)))
    bad = tmp_path / "x.probes.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(FacefleetError, match=r"probe set x\.probes\.npz unreadable"):
        load_probes(bad)
    np.savez(bad, kind=np.array("recognizer"))
    with pytest.raises(FacefleetError, match=r"not a facefleet\.probes/1 file"):
        load_probes(bad)
    np.savez(bad, schema=np.array("facefleet.probes/1"), kind=np.array("recognizer"), crops=np.zeros((2, 112, 112), np.uint8),
             reference=np.zeros((2, 512), np.float32), min_cosine=np.float64(0.9))
    with pytest.raises(FacefleetError, match="arrays of the wrong shape or type for a recognizer"):
        load_probes(bad)


def test_tolerance_comes_from_the_fidelity_gate(tmp_path):
    rep = {"gate": {"min_face_px": 40, "margin": 0.05},
           "sizes": [{"face_px": s, "cos_float_quant_p5": c} for s, c in ((112, 0.97), (56, 0.93), (40, 0.91), (28, 0.6))]}
    (tmp_path / "fidelity.json").write_text(json.dumps(rep))
    assert tolerance_from_fidelity(tmp_path / "fidelity.json") == pytest.approx(0.91 - 0.05)  # 28 px is below the gate
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(FacefleetError, match="unreadable"):
        tolerance_from_fidelity(tmp_path / "bad.json")


def test_publish_ships_the_probe_set_with_its_model(models):
    recipe = {"Manifests": [{"Artifacts": [{"URI": "s3://BUCKET_NAME/c/1.0.0/w600k_mbf_int8dyn.onnx"},
                                           {"URI": "s3://BUCKET_NAME/c/1.0.0/facefleet.whl"}]}]}
    files = [models / INT8, probes_path(models / INT8), probes_path(models / FP32)]
    add_probe_artifacts(recipe, files)
    uris = [a["URI"] for a in recipe["Manifests"][0]["Artifacts"]]
    assert uris[-1] == "s3://BUCKET_NAME/w600k_mbf_int8dyn.probes.npz" and len(uris) == 3  # not fp32's: not shipped
    assert is_model(probes_path(models / INT8))  # content-addressed like its model


def test_build_probes_cli_writes_beside_the_model_and_fails_in_one_line(tmp_path, assets, cli_env):
    import subprocess
    import sys

    (tmp_path / INT8).symlink_to(assets / "models" / INT8)
    run = lambda *a: subprocess.run([sys.executable, "-m", "facefleet", "build", "probes", *map(str, a)],  # noqa: E731
                                    capture_output=True, text=True, env=cli_env, timeout=300)
    r = run(tmp_path / INT8, "--float", assets / "models" / FP32, "--count", 2, "--min-cosine", 0.95)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["probes"] == str(tmp_path / "w600k_mbf_int8dyn.probes.npz") and out["reference"] == "w600k_mbf_fp32"
    assert float(load_probes(tmp_path / "w600k_mbf_int8dyn.probes.npz")["min_cosine"]) == 0.95
    r = run(tmp_path / INT8, "--fidelity", tmp_path / "missing.json")
    assert r.returncode == 1 and "Traceback" not in r.stderr and "fidelity report" in r.stderr.strip().splitlines()[-1]


def test_models_canary_cli_prints_the_figures_and_exits_3_on_a_failure(models, assets, cli_env):
    import subprocess
    import sys

    run = lambda *a: subprocess.run([sys.executable, "-m", "facefleet", "models", "canary", *map(str, a)],  # noqa: E731
                                    capture_output=True, text=True, env=cli_env, timeout=300)
    r = run(models / INT8, models / DET)
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert [(x["role"], x["passed"]) for x in rows] == [("recognizer", True), ("detector", True)]
    r = run(models / "wrong" / FP32)
    assert r.returncode == 3
    row = json.loads(r.stdout)
    assert row["cos_min"] < row["min_cosine"] and "probe cosine to the float model min" in row["failed"]
    r = run(assets / "models" / "mobilefacenet_128.onnx")
    assert r.returncode == 1 and r.stderr.strip() == (
        f"facefleet: error: no probe set {assets / 'models' / 'mobilefacenet_128.probes.npz'} (facefleet build probes makes one)")
