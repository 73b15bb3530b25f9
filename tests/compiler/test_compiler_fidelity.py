"""``facefleet build fidelity`` on real faces: float w600k_mbf vs its onnxruntime / DFC-emulated quantization."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from facefleet.cloud.compiler.fidelity import GATE_EXIT, FidelityOptions, run_fidelity
from facefleet.errors import FacefleetError
from facefleet.modelspec import ModelSpec, load_catalog

DOUBLES = Path(__file__).parent / "doubles"
SIZES = (112, 40, 28)


@pytest.fixture(scope="module")
def faces(tmp_path_factory, assets):
    """Five identities of faces/people (up to 3 photos each), linked into a temporary folder."""
    root = tmp_path_factory.mktemp("people")
    for ident in sorted((assets / "faces" / "people").iterdir())[:5]:
        (root / ident.name).mkdir()
        for f in sorted(ident.glob("*.jpg"))[:3]:
            (root / ident.name / f.name).symlink_to(f)
    return root


@pytest.fixture(scope="module")
def reports(tmp_path_factory, assets, faces):
    out = {}
    for act in ("int8", "int16"):
        d = tmp_path_factory.mktemp(f"fid_{act}")
        out[act] = (d, run_fidelity(assets / "models" / "w600k_mbf_fp32.onnx", faces, d,
                                    detector_path=assets / "models" / "det_500m.onnx",
                                    opts=FidelityOptions(sizes=SIZES, activations=act, calib_size=24)))
    return out


def test_report_numbers_are_real(reports):
    _, r8 = reports["int8"]
    _, r16 = reports["int16"]
    assert r8["schema"] == "facefleet.fidelity/1" and [s["face_px"] for s in r8["sizes"]] == list(SIZES)
    assert r8["faces"]["identities"] == 5
    big = r8["sizes"][0]
    assert big["detection_rate"] == 1.0 and big["float"]["match_rate"] == 1.0  # the float model separates these faces
    assert big["float"]["same_mean"] > 0.5 > 0.2 > big["float"]["different_mean"]
    # INT16 activations track float; INT8 activations with MinMax do not (the measured hint)
    assert min(s["cos_float_quant_mean"] for s in r16["sizes"]) > 0.99
    # The INT8 loss is a property of the data and the onnxruntime release (0.94-0.97 seen here), so the
    # check is relative: at every size INT8 loses many times what INT16 loses, and clearly more than 1%.
    assert max(s["cos_float_quant_mean"] for s in r8["sizes"]) < 0.99
    for s8, s16 in zip(r8["sizes"], r16["sizes"], strict=True):
        assert 1 - s8["cos_float_quant_mean"] > 5 * (1 - s16["cos_float_quant_mean"])
    assert r8["sizes"][-1]["E_mean"] > 5 * r16["sizes"][-1]["E_mean"]
    # small faces have smaller embeddings (the quality signal the noise floor hurts)
    assert r8["sizes"][-1]["pre_norm_float_mean"] < r8["sizes"][0]["pre_norm_float_mean"]
    for s in r8["sizes"]:
        for key in ("float", "quantized_same_gallery", "quantized_float_gallery"):
            assert 0.0 <= s[key]["match_rate"] <= 1.0


@pytest.mark.parametrize("act", ["int8", "int16"])
def test_gate_verdict_follows_its_rule(reports, act):
    _, r = reports[act]
    g = r["gate"]
    expected = [s["face_px"] for s in r["sizes"] if s["face_px"] >= g["min_face_px"]
                and s["quantized_same_gallery"]["match_rate"] < s["float"]["match_rate"] - g["margin"]]
    assert [f["face_px"] for f in g["failures"]] == expected
    assert g["passed"] is (not expected)
    rec = r["recommended"]
    assert rec["pre_norm_gate"] > 0 and -1 < rec["match_threshold"] <= 1


def test_outputs_written(reports):
    d, r = reports["int8"]
    on_disk = json.loads((d / "fidelity.json").read_text())
    assert on_disk["gate"] == r["gate"] and on_disk["seconds"]["total"] > 0
    for png in r["plots"]:
        assert Path(png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and Path(png).stat().st_size > 10_000
    page = (d / "fidelity.html").read_text()
    assert "<table>" in page and all(Path(p).name in page for p in r["plots"])
    assert ("PASS" if r["gate"]["passed"] else "FAIL") in page


def test_recommendation_written_into_model_json(reports, tmp_path):
    _, r = reports["int8"]
    spec = next(s for s in load_catalog() if s.name == "w600k_mbf_fp32")
    target = tmp_path / "w600k_mbf.json"
    target.write_text(spec.model_dump_json())
    from facefleet.cloud.compiler.fidelity import apply_recommendation

    apply_recommendation(target, r)
    new = ModelSpec.model_validate_json(target.read_text())
    assert new.recognizer.pre_norm_gate == r["recommended"]["pre_norm_gate"]
    assert new.recognizer.match_threshold == r["recommended"]["match_threshold"]
    assert new.provenance["fidelity"]["passed"] is r["gate"]["passed"]
    assert not list(tmp_path.glob("*.part"))


def test_cli_exit_code_is_the_gate(tmp_path, faces, cli_env, assets):
    out = tmp_path / "rep"
    proc = subprocess.run([sys.executable, "-m", "facefleet", "build", "fidelity", str(assets / "models" / "w600k_mbf_fp32.onnx"),
                           "--faces", str(faces), "--out", str(out), "--sizes", "56,28", "--gate-min-px", "28",
                           "--margin", "0", "--calib-size", "16"], env=cli_env, capture_output=True, text=True, timeout=300)
    report = json.loads((out / "fidelity.json").read_text())
    assert proc.returncode == (0 if report["gate"]["passed"] else GATE_EXIT), proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1])["passed"] is report["gate"]["passed"]


def test_cli_bad_input(tmp_path, faces, cli_env, assets):
    model = str(assets / "models" / "w600k_mbf_fp32.onnx")
    one = tmp_path / "one"
    shutil.copytree(faces / sorted(p.name for p in faces.iterdir())[0], one / "solo", symlinks=True)
    cases = [([model, "--faces", str(tmp_path / "nope")], "image folder not found"),
             ([model, "--faces", str(one)], "at least 2 identities"),
             ([str(tmp_path / "x.onnx"), "--faces", str(faces)], "model file not found"),
             ([model, "--faces", str(faces), "--sizes", "112,4"], "face sizes must be >= 8 px")]
    for args, message in cases:
        proc = subprocess.run([sys.executable, "-m", "facefleet", "build", "fidelity", *args, "--out", str(tmp_path / "o")],
                              env=cli_env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 1 and message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_dfc_emulator_as_the_quantized_model(tmp_path, faces, assets, dfc_double, load_detector, small_spec):
    """With a quantized HAR and hailo_sdk_client, the report uses SDK_QUANTIZED (here: the double)."""
    from facefleet.cloud.compiler.hef import build_hef

    res = build_hef(small_spec(tmp_path, "w600k_mbf"), tmp_path / "hef", detector=load_detector(), progress=False)
    r = run_fidelity(assets / "models" / "w600k_mbf_fp32.onnx", faces, tmp_path / "rep",
                     detector_path=assets / "models" / "det_500m.onnx", opts=FidelityOptions(sizes=(112,)), har=res.har)
    assert r["quantized"]["method"] == "dfc-emulator" and r["quantized"]["dfc_version"] == dfc_double.__version__
    assert 0.3 < r["sizes"][0]["cos_float_quant_mean"] < 0.9999


def test_har_without_sdk_is_refused(tmp_path, faces, assets, monkeypatch):
    monkeypatch.setitem(sys.modules, "hailo_sdk_client", None)
    with pytest.raises(FacefleetError, match="--har needs hailo_sdk_client"):
        run_fidelity(assets / "models" / "w600k_mbf_fp32.onnx", faces, tmp_path, detector_path=assets / "models" / "det_500m.onnx",
                     opts=FidelityOptions(sizes=(112,), calib_size=4), har=tmp_path / "q.har")


def test_noise_localisation_proposes_overrides_that_help(tmp_path, faces, assets):
    import yaml

    from facefleet.cloud.compiler.noise import run_noise
    from facefleet.cloud.compiler.spec import parse_build_spec

    r = run_noise(assets / "models" / "w600k_mbf_fp32.onnx", faces, tmp_path, detector_path=assets / "models" / "det_500m.onnx",
                  top=3, calib_size=24, scales=(112, 28))
    assert len(r["layers"]) > 50 and len(r["proposed"]) == 3
    drops = [x["drop_db"] for x in r["layers"] if x["weights"] and x["drop_db"] is not None]
    assert r["proposed"][0]["drop_db"] == max(drops)
    # the lines drop into a build spec as they are
    d = yaml.safe_load((Path(__file__).parents[2] / "build" / "specs" / "w600k_mbf.yaml").read_text())
    d.update(yaml.safe_load(r["spec_lines"]))
    spec = parse_build_spec(d, "w600k_mbf+noise")
    assert spec.precision[0].onnx_nodes == [x["node"] for x in r["proposed"]]  # HAR names come from the parsed HAR
    before, after = r["effect"]["baseline"], r["effect"]["with_overrides"]
    assert after[28]["cos_mean"] > before[28]["cos_mean"] and after[28]["E_mean"] < before[28]["E_mean"]
    assert json.loads((tmp_path / "noise.json").read_text())["proposed"] == r["proposed"]
    assert Path(r["plot"]).stat().st_size > 10_000
