"""The Greengrass draft files satisfy GDK's own schemas (shared/reference/gdk-schemas)."""

import json
from pathlib import Path

import jsonschema
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _lower_keys(obj):
    """GDK lowercases recipe keys before validating."""
    if isinstance(obj, dict):
        return {k.lower(): _lower_keys(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_lower_keys(v) for v in obj]
    return obj


def _schema(assets, name):
    return json.loads((assets.parent / "reference" / "gdk-schemas" / name).read_text())


def test_gdk_config_is_valid(assets):
    config = json.loads((ROOT / "gdk-config.json").read_text())
    jsonschema.validate(config, _schema(assets, "config_schema.json"))
    (name,) = config["component"]
    assert (ROOT / "recipes" / f"{name}.yaml").is_file()


def test_recipe_draft_is_valid(assets):
    text = (ROOT / "recipes" / "com.facefleet.FaceRecognition.yaml").read_text().replace("{COMPONENT_VERSION}", "1.0.0")
    assert len(text.encode()) <= 16000
    recipe = yaml.safe_load(text)
    jsonschema.validate(_lower_keys(recipe), _schema(assets, "recipe_schema.json"))
    archs = {m["Platform"]["architecture"] for m in recipe["Manifests"]}
    assert archs == {"aarch64", "amd64"}
    assert all("--system-site-packages" in m["Lifecycle"]["Install"]["Script"] for m in recipe["Manifests"])
