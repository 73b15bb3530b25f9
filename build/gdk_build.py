#!/usr/bin/env python3
"""`gdk component build` (custom build_system) for com.facefleet.FaceRecognition.

GDK 1.6.2 deletes greengrass-build/, then runs this and nothing else, so this writes what GDK
publish and the device CLI read:

    greengrass-build/recipes/<recipe file>                      the recipe, version filled in
    greengrass-build/artifacts/<name>/<version>/<files>         wheel + model files

`greengrass-cli deployment create --recipeDir greengrass-build/recipes --artifactDir
greengrass-build/artifacts --merge "<name>=<version>"` deploys the same layout on a device.
GDK publish reads the recipe under the name of the (resolved) root recipe.yaml, so it is written
under that name. Model files (every s3 artifact but the wheel) come from $FACEFLEET_MODEL_DIR
(default ../shared/assets/models); a missing one fails the build. Standard library only: it
runs with the system python3 that runs gdk.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPE_MAX_BYTES = 16_000  # GDK rejects larger recipes


def fail(msg: str) -> None:
    sys.stderr.write(f"gdk_build: error: {msg}\n")
    raise SystemExit(1)


def package_version() -> str:
    return re.search(r'__version__ = "(.+)"', (ROOT / "src" / "facefleet" / "__init__.py").read_text())[1]


def component() -> tuple[str, str]:
    cfg = json.loads((ROOT / "gdk-config.json").read_text())
    (name,) = cfg["component"]
    version = cfg["component"][name]["version"]
    if version != package_version():
        fail(f"gdk-config.json version {version} differs from the package version {package_version()}")
    return name, version


def artifact_files(recipe_text: str) -> list[str]:
    names = re.findall(r'URI:\s*"?s3://[^"\s]*/([^/"\s]+)"?', recipe_text)
    return list(dict.fromkeys(names))


def build(out: Path, model_dir: Path, wheel: Path | None = None) -> Path:
    name, version = component()
    root_recipe = ROOT / "recipe.yaml"
    if not root_recipe.exists():
        fail("recipe.yaml is missing beside gdk-config.json (a symlink to recipes/<name>.yaml)")
    text = root_recipe.read_text().replace("{COMPONENT_VERSION}", version)
    if len(text.encode()) > RECIPE_MAX_BYTES:
        fail(f"recipe is {len(text.encode())} bytes; GDK allows {RECIPE_MAX_BYTES}")
    wheel_name = f"facefleet-{version}-py3-none-any.whl"
    models = [f for f in artifact_files(text) if f != wheel_name]
    missing = [f for f in models if not (model_dir / f).is_file()]
    if missing:
        fail(f"model artifacts not found in {model_dir}: {', '.join(missing)} (set FACEFLEET_MODEL_DIR)")
    if out.exists():
        shutil.rmtree(out)
    recipes, arts = out / "recipes", out / "artifacts" / name / version
    recipes.mkdir(parents=True)
    arts.mkdir(parents=True)
    if wheel is None:
        subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(arts), str(ROOT)], check=True)
    else:
        shutil.copy2(wheel, arts / wheel_name)
    if not (arts / wheel_name).is_file():
        fail(f"the wheel {wheel_name} was not built")
    for f in models:
        shutil.copy2(model_dir / f, arts / f)
        probes = model_dir / (Path(f).stem + ".probes.npz")  # the model's quality-canary probe set, if built
        if probes.is_file():
            shutil.copy2(probes, arts / probes.name)
    recipe_out = recipes / root_recipe.resolve().name
    recipe_out.write_text(text)
    print(f"built {name} {version}: {recipe_out.relative_to(out.parent)}, {len(list(arts.iterdir()))} artifact(s) in "
          f"{arts.relative_to(out.parent)}")
    return recipe_out


def main(argv: list[str] | None = None) -> int:
    import os

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(ROOT / "greengrass-build"), help="output folder (GDK: greengrass-build)")
    p.add_argument("--model-dir", default=os.environ.get("FACEFLEET_MODEL_DIR", str(ROOT.parent / "shared" / "assets" / "models")))
    p.add_argument("--wheel", help="use this wheel instead of building one")
    a = p.parse_args(argv)
    build(Path(a.out), Path(a.model_dir), Path(a.wheel) if a.wheel else None)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
