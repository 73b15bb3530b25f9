"""The Greengrass packaging: gdk-config.json, the recipe (one source of truth) and the build
layout, validated against GDK 1.6.2's own JSON schemas (shared/reference/gdk-schemas)."""

import json
import re
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from facefleet import __version__
from facefleet.config import parse_component_config

ROOT = Path(__file__).resolve().parents[1]
NAME = "com.facefleet.FaceRecognition"


def _lower_keys(obj):
    """GDK lowercases recipe keys before validating."""
    if isinstance(obj, dict):
        return {k.lower(): _lower_keys(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_lower_keys(v) for v in obj]
    return obj


def _schema(assets, name):
    return json.loads((assets.parent / "reference" / "gdk-schemas" / name).read_text())


def _validate_recipe(text: str, assets) -> dict:
    assert len(text.encode()) <= 16000
    recipe = yaml.safe_load(text)
    jsonschema.validate(_lower_keys(recipe), _schema(assets, "recipe_schema.json"))
    return recipe


@pytest.fixture(scope="module")
def recipe(assets):
    text = (ROOT / "recipes" / f"{NAME}.yaml").read_text().replace("{COMPONENT_VERSION}", __version__)
    return _validate_recipe(text, assets)


def test_gdk_config_is_valid(assets):
    config = json.loads((ROOT / "gdk-config.json").read_text())
    jsonschema.validate(config, _schema(assets, "config_schema.json"))
    (name,) = config["component"]
    comp = config["component"][name]
    assert name == NAME and comp["version"] == __version__
    assert comp["build"]["build_system"] == "custom" and "build/gdk_build.py" in comp["build"]["custom_build_command"]
    # GDK wants exactly one recipe.yaml|recipe.json beside gdk-config.json: a link to the one source
    assert (ROOT / "recipe.yaml").resolve() == (ROOT / "recipes" / f"{NAME}.yaml").resolve()
    assert not (ROOT / "recipe.json").exists()


def test_recipe_manifests_and_lifecycle(recipe):
    assert recipe["ComponentName"] == NAME
    assert {m["Platform"]["architecture"] for m in recipe["Manifests"]} == {"aarch64", "amd64"}
    for m in recipe["Manifests"]:
        life = m["Lifecycle"]
        assert "--system-site-packages" in life["Install"]["Script"]
        assert f"facefleet-{__version__}-py3-none-any.whl" in life["Install"]["Script"]
        assert life["Install"]["Timeout"] >= 600  # a venv + pip install needs more than the default 120 s
        assert "-m facefleet.component" in life["Run"]["Script"] and "{artifacts:path}" in life["Run"]["Script"]
        files = [Path(a["URI"]).name for a in m["Artifacts"]]
        assert all(a["URI"].startswith("s3://BUCKET_NAME/COMPONENT_NAME/COMPONENT_VERSION/") for a in m["Artifacts"])
        assert recipe["ComponentConfiguration"]["DefaultConfiguration"]["models"]["detector"] in files
        assert recipe["ComponentConfiguration"]["DefaultConfiguration"]["models"]["recognizer"] in files
    arm = next(m for m in recipe["Manifests"] if m["Platform"]["architecture"] == "aarch64")
    assert recipe["ComponentConfiguration"]["DefaultConfiguration"]["HAILO_DET_HEF"] in [Path(a["URI"]).name for a in arm["Artifacts"]]
    assert recipe["ComponentDependencies"]["aws.greengrass.Nucleus"]["VersionRequirement"] == ">=2.6.0"


def test_install_reinstalls_exactly_the_component_versions_wheel(recipe):
    """Issue 10 item 3 (the script itself runs in tests/greengrass/test_deployment_acceptance.py):
    the stamp is per component version (its artifacts folder) and wheel digest, not the package
    version every component version shares; item 12: numpy stays < 2 where HailoRT is present."""
    scripts = {m["Lifecycle"]["Install"]["Script"] for m in recipe["Manifests"]}
    assert len(scripts) == 1  # one Install for every platform
    (script,) = scripts
    assert "basename \"{artifacts:path}\"" in script and "sha256sum" in script
    assert "--force-reinstall --no-deps" in script
    assert 'import hailo_platform' in script and 'PIN="numpy<2"' in script
    assert subprocess.run(["sh", "-n", "-c", script], capture_output=True).returncode == 0  # valid POSIX sh


def test_default_configuration_uses_the_shared_schema(recipe):
    default = recipe["ComponentConfiguration"]["DefaultConfiguration"]
    cfg = parse_component_config(default, "(recipe DefaultConfiguration)")
    assert cfg.cameras and cfg.models.backend in ("onnx", "hailo")
    assert cfg.HAILO_REC_HEF == ""  # empty: the Greengrass v1 environment variable may supply it


def test_access_control_works_on_a_default_nucleus_and_is_least_privilege(recipe):
    """No ``{iot:thingName}``: a default nucleus (interpolateComponentConfiguration false) never
    interpolates it, and an uninterpolated resource matches no topic (issue 10 item 1). The
    resources allow exactly the default topics of any one thing name, under facefleet/ only;
    the core device's IoT policy is the per-device limit (docs/greengrass.md). Matching is the
    nucleus's own (tests/greengrass/nucleus.py, WildcardTrie semantics)."""
    from greengrass.nucleus import resource_matches

    default = recipe["ComponentConfiguration"]["DefaultConfiguration"]
    acl = default["accessControl"]
    assert set(acl) == {"aws.greengrass.ipc.mqttproxy", "aws.greengrass.ipc.pubsub"}
    ops: dict[str, list[str]] = {}
    for policies in acl.values():
        for pid, pol in policies.items():
            assert pid.startswith(f"{NAME}:"), pid  # policy ids are unique across components
            assert pol["policyDescription"]
            for op in pol["operations"]:
                assert op != "*"
                ops.setdefault(op, []).extend(pol["resources"])
    assert set(ops) == {"aws.greengrass#PublishToIoTCore", "aws.greengrass#SubscribeToIoTCore", "aws.greengrass#PublishToTopic"}
    # facefleet/ topics, plus exactly the IoT Jobs topics a device uses to follow fleet commands (gallery erase)
    jobs = {"$aws/things/+/jobs/notify-next", "$aws/things/+/jobs/start-next", "$aws/things/+/jobs/start-next/accepted",
            "$aws/things/+/jobs/+/update"}
    for resources in ops.values():
        assert all((r.startswith("facefleet/") or r in jobs) and "{iot:" not in r and "#" not in r for r in resources), resources
    for thing in ("pi-7", "thing-1"):
        events = default["topics"]["events"].replace("{thing}", thing)
        for kind in ("match", "status", "error", "model_changed", "command_result"):
            topic = events.replace("{type}", kind)
            assert any(resource_matches(r, topic, mqtt=True) for r in ops["aws.greengrass#PublishToIoTCore"])
            assert any(resource_matches(r, topic, mqtt=False) for r in ops["aws.greengrass#PublishToTopic"])
        commands = default["topics"]["commands"].replace("{thing}", thing)
        assert any(resource_matches(r, commands, mqtt=True) for r in ops["aws.greengrass#SubscribeToIoTCore"])
    for other in ("facefleet/pi-7/commands/x", "other/pi-7/commands", "facefleet/a/b/commands"):
        assert not any(resource_matches(r, other, mqtt=True) for r in ops["aws.greengrass#SubscribeToIoTCore"])


def test_build_lays_out_what_gdk_and_the_device_cli_read(tmp_path, assets):
    recipe_text = (ROOT / "recipes" / f"{NAME}.yaml").read_text()
    files = sorted(set(re.findall(r"COMPONENT_VERSION/([^\"\s]+)", recipe_text)))
    models = tmp_path / "models"
    models.mkdir()
    for f in files:
        if f.endswith(".onnx"):
            (models / f).symlink_to(assets / "models" / f)
        elif not f.endswith(".whl"):  # HEFs come from the Hailo compile step; stand-ins for the layout
            (models / f).write_bytes(b"placeholder " + f.encode())
    out = tmp_path / "greengrass-build"
    build = [sys.executable, str(ROOT / "build" / "gdk_build.py"), "--out", str(out), "--model-dir", str(models)]
    r = subprocess.run(build, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    arts = out / "artifacts" / NAME / __version__
    built = {p.name for p in arts.iterdir()}
    assert built == {f.replace("{COMPONENT_VERSION}", __version__) for f in files}
    assert [p.name for p in (out / "recipes").iterdir()] == [(ROOT / "recipe.yaml").resolve().name]
    text = (out / "recipes" / f"{NAME}.yaml").read_text()
    assert "{COMPONENT_VERSION}" not in text
    built_recipe = _validate_recipe(text, assets)
    assert built_recipe["ComponentVersion"] == __version__
    for m in built_recipe["Manifests"]:
        assert {Path(a["URI"]).name for a in m["Artifacts"]} <= built
    # a missing model file fails the build with a message naming it
    (models / "w600k_mbf.hef").unlink()
    r = subprocess.run(build, capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and "w600k_mbf.hef" in r.stderr and "Traceback" not in r.stderr
