"""The CLI contract, and bad input: one clear line on stderr, a non-zero exit, no traceback."""

import json
import shutil
import subprocess
import sys

import cv2
import jsonschema
import numpy as np
import pytest

from facefleet.events import json_schema
from facefleet.modelspec import resolve_model


def ff(*args, env, cwd=None, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "facefleet", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=timeout)


def assert_clean_error(r: subprocess.CompletedProcess, needle: str) -> None:
    assert r.returncode != 0
    assert "Traceback" not in r.stderr
    lines = [ln for ln in r.stderr.splitlines() if "facefleet: error:" in ln]
    assert len(lines) == 1, r.stderr
    assert needle in lines[0], lines[0]


@pytest.fixture(scope="module")
def gallery(tmp_path_factory, assets, cli_env):
    g = tmp_path_factory.mktemp("cli") / "gallery"
    r = ff("gallery", "add", "--gallery", g, "--name", "obama", assets / "enroll" / "obama.jpg", env=cli_env)
    assert r.returncode == 0, r.stderr
    assert "obama: 1 face(s) added" in r.stdout
    return g


def test_gallery_list(gallery, cli_env):
    r = ff("gallery", "list", "--gallery", gallery, "--json", env=cli_env)
    assert r.returncode == 0
    assert [row["name"] for row in json.loads(r.stdout)] == ["obama"]


def test_run_prints_schema_valid_jsonl(gallery, assets, cli_env, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    shutil.copy(assets / "faces" / "couple.jpg", photos)
    shutil.copy(assets / "enroll" / "obama.jpg", photos)
    r = ff("run", "--source", photos, "--gallery", gallery, env=cli_env)
    assert r.returncode == 0, r.stderr
    events = [json.loads(line) for line in r.stdout.splitlines()]
    schema = json_schema()
    for e in events:
        jsonschema.validate(e, schema)
    assert len(events) == 3
    assert [e["identity"] for e in events if e["source_name"] == "obama.jpg"] == ["obama"]
    # --events FILE appends; stdout stays empty
    out = tmp_path / "ev.jsonl"
    r = ff("run", "--source", photos, "--gallery", gallery, "--events", out, env=cli_env)
    assert r.returncode == 0 and r.stdout == ""
    assert len(out.read_text().splitlines()) == 3


def test_events_schema_command_matches_published_file(cli_env, tmp_path):
    from pathlib import Path

    r = ff("events", "schema", env=cli_env)
    assert r.returncode == 0
    published = Path(__file__).resolve().parents[1] / "schemas" / "event.schema.json"
    assert json.loads(r.stdout) == json.loads(published.read_text())


# ---- bad input -------------------------------------------------------------------------------
def _corrupt(path, data=b"\x00garbage\xff" * 100):
    path.write_bytes(data)
    return path


def _sidecar(tmp_path, src_model, name, **changes):
    dst = tmp_path / f"{name}.onnx"
    shutil.copy(src_model, dst)
    spec = resolve_model(src_model).spec.model_dump(mode="json")
    spec.update(name=name, file=dst.name, **changes)
    (tmp_path / f"{name}.json").write_text(json.dumps(spec))
    return dst


def test_missing_image(gallery, cli_env, tmp_path):
    assert_clean_error(ff("gallery", "add", "--gallery", gallery, "--name", "x", tmp_path / "no.jpg", env=cli_env),
                       "image not found")


def test_corrupt_image(gallery, cli_env, tmp_path):
    bad = _corrupt(tmp_path / "bad.jpg")
    assert_clean_error(ff("gallery", "add", "--gallery", gallery, "--name", "x", bad, env=cli_env), "cannot decode image")
    assert_clean_error(ff("run", "--source", bad, "--gallery", gallery, env=cli_env), "cannot decode image")


def test_enroll_image_without_face(gallery, cli_env, tmp_path):
    wall = tmp_path / "wall.png"
    cv2.imwrite(str(wall), np.full((300, 300, 3), 128, np.uint8))
    assert_clean_error(ff("gallery", "add", "--gallery", gallery, "--name", "x", wall, env=cli_env), "no face found")
    r = ff("gallery", "list", "--gallery", gallery, env=cli_env)
    assert "x\t" not in r.stdout  # nothing was enrolled


def test_missing_and_corrupt_video(gallery, cli_env, tmp_path):
    assert_clean_error(ff("run", "--source", tmp_path / "none.mp4", "--gallery", gallery, env=cli_env), "source not found")
    bad = _corrupt(tmp_path / "bad.mp4")
    assert_clean_error(ff("run", "--source", bad, "--gallery", gallery, env=cli_env), "bad.mp4")


def test_unknown_gallery(assets, cli_env, tmp_path):
    assert_clean_error(ff("run", "--source", assets / "faces" / "couple.jpg", "--gallery", tmp_path / "nope", env=cli_env),
                       "unknown gallery")
    assert_clean_error(ff("gallery", "list", "--gallery", tmp_path / "nope", env=cli_env), "unknown gallery")


def test_missing_model(gallery, assets, cli_env, tmp_path):
    r = ff("run", "--source", assets / "faces" / "couple.jpg", "--gallery", gallery, "--recognizer", tmp_path / "x.onnx", env=cli_env)
    assert_clean_error(r, "model file not found")


def test_corrupt_model(gallery, assets, cli_env, tmp_path):
    # same name as a catalogued model, other bytes: the fingerprint catches it
    fake = _corrupt(tmp_path / "det_500m.onnx")
    r = ff("run", "--source", assets / "faces" / "couple.jpg", "--gallery", gallery, "--detector", fake, env=cli_env)
    assert_clean_error(r, "does not match its spec")
    # a spec without a sha256 and a file that is not ONNX
    m = _sidecar(tmp_path, assets / "models" / "w600k_mbf_fp32.onnx", "broken", sha256=None)
    _corrupt(m)
    r = ff("run", "--source", assets / "faces" / "couple.jpg", "--gallery", gallery, "--recognizer", m, env=cli_env)
    assert_clean_error(r, "cannot read ONNX model")


def test_onnx_outputs_do_not_fit_spec(gallery, assets, cli_env, tmp_path):
    rec_spec = resolve_model(assets / "models" / "mobilefacenet_128.onnx").spec
    wrong_dim = _sidecar(tmp_path, assets / "models" / "mobilefacenet_128.onnx", "mfn512",
                         recognizer={**rec_spec.recognizer.model_dump(), "embedding_size": 512})
    r = ff("run", "--source", assets / "faces" / "couple.jpg", "--gallery", gallery, "--recognizer", wrong_dim, env=cli_env)
    assert_clean_error(r, "spec says embedding_size 512")
    det_spec = resolve_model(assets / "models" / "scrfd_500m_kps.onnx").spec
    # a recognizer file described as a detector
    as_det = tmp_path / "d"
    as_det.mkdir()
    m = as_det / "notadet.onnx"
    shutil.copy(assets / "models" / "w600k_mbf_fp32.onnx", m)
    spec = det_spec.model_dump(mode="json")
    spec.update(name="notadet", file=m.name, sha256=None,
                input={**spec["input"], "name": "input.1", "width": None, "height": None})
    (as_det / "notadet.json").write_text(json.dumps(spec))
    r = ff("run", "--source", assets / "faces" / "couple.jpg", "--gallery", gallery, "--detector", m, env=cli_env)
    assert_clean_error(r, "named by its spec is missing")


@pytest.mark.parametrize(("yaml_text", "needle"), [
    ("detection:\n  score_threshold: 2\n", "detection.score_threshold"),
    ("tracking:\n  min_hits: 0\n", "tracking.min_hits"),
    ("recognition:\n  match_threshold: high\n", "recognition.match_threshold"),
    ("models:\n  backend: tpu\n", "models.backend"),
    ("camera: x\n", "camera"),
    ("- a list\n", "expected a mapping"),
    ("detection: [unclosed\n", "invalid YAML"),
])
def test_invalid_config(gallery, assets, cli_env, tmp_path, yaml_text, needle):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml_text)
    r = ff("run", "--source", assets / "faces" / "couple.jpg", "--gallery", gallery, "--config", cfg, env=cli_env)
    assert_clean_error(r, needle)


def test_usage_errors_are_one_line(cli_env):
    r = ff("run", "--gallery", "x", env=cli_env)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "--source" in r.stderr
