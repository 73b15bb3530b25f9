"""Proposed configurations are validated (schema, files, sha256, load + self-test) and REJECTED
with a message naming the problem, while the running pipeline keeps going on its models."""

from __future__ import annotations

import copy
import json
import logging

import pytest

from facefleet.component.models import model_paths
from facefleet.config import ComponentConfig, parse_component_config
from facefleet.modelspec import load_catalog, sha256_file

from .helpers import DET, MBF128, W600K, base_config, wait_until


def _with(cfg: dict, path: str, value) -> dict:
    out = copy.deepcopy(cfg)
    node = out
    keys = path.split(".")
    for k in keys[:-1]:
        node = node[int(k)] if isinstance(node, list) else node.setdefault(k, {})
    node[keys[-1]] = value
    return out


@pytest.fixture
def bad_models(tmp_path, assets):
    """Broken model files made at run time: garbage bytes, and a real model whose spec names
    an output it does not have."""
    spec = next(s for s in load_catalog() if s.file == MBF128)
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"not an onnx model" * 100)
    corrupt.with_suffix(".json").write_text(spec.model_copy(update={"sha256": None, "file": "corrupt.onnx"}).model_dump_json())
    wrong = tmp_path / "wrong_outputs.onnx"
    wrong.write_bytes((assets / "models" / MBF128).read_bytes())
    bad_rec = spec.recognizer.model_copy(update={"output": "embedding_that_is_not_there"})
    wrong.with_suffix(".json").write_text(spec.model_copy(update={"recognizer": bad_rec, "file": wrong.name}).model_dump_json())
    return {"corrupt": str(corrupt), "wrong": str(wrong)}


def test_invalid_configurations_are_rejected_while_the_pipeline_runs(greengrass, assets, bad_models, long_video):
    cfg = base_config(assets, cameras=[{"id": "stage", "source": str(long_video), "fps_cap": None}])
    comp, ipc = greengrass(cfg)
    try:
        worker = comp.cameras["stage"]
        assert wait_until(lambda: worker.frames >= 3, 60)
        serving = (comp.models.detector.spec.fingerprint, comp.models.recognizer.fingerprint)
        cases = [
            (_with(cfg, "cameras", "stage"), "cameras"),
            (_with(cfg, "status_interval_s", "often"), "status_interval_s"),
            (_with(cfg, "detection", {"score_threshold": 1.5}), "detection.score_threshold"),
            (_with(cfg, "recognition", {"match_threshold": -2}), "recognition.match_threshold"),
            (_with(cfg, "models.backend", "tpu"), "models.backend"),
            (_with(cfg, "models.recognizer", "missing.onnx"), "recognizer model file not found"),
            (_with(cfg, "models.recognizer", bad_models["corrupt"]), "cannot read ONNX model"),
            (_with(cfg, "models.recognizer_sha256", "0" * 64), "does not match models.recognizer_sha256"),
            (_with(cfg, "models.recognizer_sha256", "xyz"), "models.recognizer_sha256"),
            (_with(cfg, "models.recognizer", bad_models["wrong"]), "embedding_that_is_not_there"),
            (_with(cfg, "models.recognizer", DET), "expected a recognizer"),
            (_with(cfg, "cameras", [{"id": "c1", "source": "ftp://cam.local/stream"}]), "scheme must be one of"),
            (_with(cfg, "cameras", [{"id": "c1", "source": "rtsp://"}]), "scheme must be one of"),
            (_with(cfg, "cameras", [{"id": "bad id!", "source": "rtsp://cam/1"}]), "cameras.0.id"),
            (_with(cfg, "cameras", [{"id": "c1", "source": "rtsp://cam/1", "fps_cap": 0}]), "cameras.0.detect_fps"),
            (_with(cfg, "cameras", [{"id": "c1", "source": "rtsp://a/1"}, {"id": "c1", "source": "rtsp://b/1"}]), "unique"),
            (_with(cfg, "spool", {"max_events": 0}), "spool.max_events"),
            (_with(cfg, "topics", {"events": "facefleet/#"}), "wildcards"),
            (_with(cfg, "models.backend", "hailo"), "HAILO_DET_HEF"),
            ([1, 2, 3], "mapping"),
        ]
        frames_before = worker.frames
        for proposed, expected in cases:
            report = ipc.push_validation(proposed)
            assert report.status == "REJECTED", (expected, report.message)
            assert expected in report.message, (expected, report.message)
            assert report.deployment_id == "dep-1"
        assert len(cases) >= 15
        # a valid proposal is accepted: the check does not just say no
        ok = ipc.push_validation(_with(cfg, "models.recognizer", MBF128))
        assert ok.status == "ACCEPTED", ok.message
        # keys another component version left on the device are ignored, and said so
        left = ipc.push_validation(_with(cfg, "bogus_key", 1))
        assert left.status == "ACCEPTED" and "bogus_key" in left.message, left.message
        # the same bad configurations pushed as a live update: an error event, the old models serve on
        ipc.set_configuration(_with(cfg, "models.recognizer", bad_models["wrong"]))
        assert wait_until(lambda: len(ipc.events("error")) >= 1, 60)
        ipc.set_configuration(_with(cfg, "detection", {"score_threshold": 7}))
        assert wait_until(lambda: len(ipc.events("error")) >= 2, 60)
        errors = [e["message"] for e in ipc.events("error")]
        assert any("keeping the serving models" in m and "embedding_that_is_not_there" in m for m in errors)
        assert any("detection.score_threshold" in m for m in errors)
        assert (comp.models.detector.spec.fingerprint, comp.models.recognizer.fingerprint) == serving
        assert wait_until(lambda: worker.frames > frames_before + 3, 30), "the pipeline stopped"
        assert not worker.finished.is_set() and worker._thread.is_alive()
        assert ipc.states == ["RUNNING"]
    finally:
        comp.stop()


def test_one_schema_for_recipe_ipc_and_yaml(tmp_path, assets):
    """Greengrass returns numbers as floats; the shared schema coerces them."""
    cfg = parse_component_config({"spool": {"max_events": 500.0, "batch": 10.0}, "status_interval_s": 30})
    assert cfg.spool.max_events == 500 and isinstance(cfg.spool.max_events, int)
    schema = ComponentConfig.model_json_schema()

    def undocumented(s, defs, path=""):
        out = []
        for name, prop in s.get("properties", {}).items():
            ref = prop.get("$ref") or next((a.get("$ref") for a in prop.get("anyOf", []) if "$ref" in a), None)
            if ref is None and prop.get("type") == "array" and "$ref" in prop.get("items", {}):
                ref = prop["items"]["$ref"]
            if ref:
                out += undocumented(defs[ref.split("/")[-1]], defs, f"{path}{name}.")
            elif "description" not in prop:
                out.append(path + name)
        return out

    missing = [m for m in undocumented(schema, schema["$defs"]) if not m.startswith("tracking.")]
    assert missing == [], f"fields without a description: {missing}"
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text(json.dumps(base_config(assets)))
    from facefleet.config import load_config
    assert isinstance(load_config(yaml_file, ComponentConfig), ComponentConfig)


def test_relative_hef_and_the_v1_environment_variable(tmp_path, caplog):
    arts = tmp_path / "artifacts"
    cfg = parse_component_config({"models": {"backend": "hailo"}, "HAILO_DET_HEF": "scrfd.hef", "HAILO_REC_HEF": ""})
    with caplog.at_level(logging.INFO):
        p = model_paths(cfg, arts, {"HAILO_REC_HEF": "/opt/v1/arcface.hef"})
    assert p.recognizer.as_posix() == "/opt/v1/arcface.hef" and p.detector == arts / "scrfd.hef"
    assert "environment variable" in caplog.text
    caplog.clear()
    cfg2 = cfg.model_copy(update={"HAILO_REC_HEF": "models/arcface.hef"})
    with caplog.at_level(logging.INFO):
        p2 = model_paths(cfg2, arts, {"HAILO_REC_HEF": "/opt/v1/arcface.hef"})
    assert p2.recognizer == arts / "models" / "arcface.hef"
    assert "wins over environment" in caplog.text


def test_configured_sha256_must_match(tmp_path, assets):
    from facefleet.component.models import check_files

    good = sha256_file(assets / "models" / W600K)
    cfg = parse_component_config(base_config(assets, models={"backend": "onnx", "detector": DET, "recognizer": W600K,
                                                               "recognizer_sha256": good}))
    check_files(cfg, model_paths(cfg, assets / "models", {}))


def test_keys_left_by_another_version_do_not_stop_the_component(greengrass, assets):
    """Issue 10 item 13: the nucleus keeps keys a merge does not name (an older version's
    ``models.old_option``, a newer version's ``future_section``): the component starts and
    serves; a known key with a wrong type is still refused."""
    cfg = base_config(assets, future_section={"x": 1}, models={"backend": "onnx", "detector": DET, "recognizer": W600K,
                                                               "old_option": True})
    comp, nucleus = greengrass(cfg)
    try:
        assert nucleus.states == ["RUNNING"]
        report = nucleus.push_validation(_with(cfg, "status_interval_s", "often"))
        assert report.status == "REJECTED" and "status_interval_s" in report.message
    finally:
        comp.stop()
    with pytest.raises(Exception, match="status_interval_s"):
        parse_component_config({"status_interval_s": "often", "left_over": 1})


def test_camera_capture_settings_and_the_deprecated_fps_cap():
    """Cameras take the capture settings (decoder, hwaccel, decode threads, detect_fps); fps_cap
    from configurations already on devices still validates, as detect_fps."""
    import pytest

    from facefleet.config import parse_component_config
    from facefleet.errors import FacefleetError

    cfg = parse_component_config({"cameras": [
        {"id": "door", "source": "rtsp://cam/sub", "decoder": "pyav", "hwaccel": "drm", "decode_threads": 2, "detect_fps": 5},
        {"id": "old", "source": "file:///v.mp4", "fps_cap": 12}]})
    door, old = cfg.cameras
    assert (door.decoder, door.hwaccel, door.decode_threads, door.detect_fps) == ("pyav", "drm", 2, 5.0)
    assert old.detect_fps == 12.0 and old.target == "/v.mp4"
    with pytest.raises(FacefleetError, match="set only detect_fps"):
        parse_component_config({"cameras": [{"id": "c", "source": "rtsp://h/1", "fps_cap": 10, "detect_fps": 5}]})
    with pytest.raises(FacefleetError, match="hwaccel needs decoder: pyav"):
        parse_component_config({"cameras": [{"id": "c", "source": "rtsp://h/1", "hwaccel": "drm"}]})
