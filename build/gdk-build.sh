#!/usr/bin/env bash
# `gdk component build` (custom): wheel + recipe into greengrass-build/ as GDK 1.6.2 expects.
# First draft: the Greengrass issue adds model artifacts and the on-device recipes/ layout.
set -euo pipefail
cd "$(dirname "$0")/.."
name=com.facefleet.FaceRecognition
version="${COMPONENT_VERSION:-$(python3 -c 'import re;print(re.search(r"__version__ = \"(.+)\"", open("src/facefleet/__init__.py").read())[1])')}"
out=greengrass-build
rm -rf "$out"
mkdir -p "$out/recipes" "$out/artifacts/$name/$version"
python3 -m pip wheel --quiet --no-deps --wheel-dir "$out/artifacts/$name/$version" .
sed "s/{COMPONENT_VERSION}/$version/g" "recipes/$name.yaml" > "$out/recipes/$name.yaml"
echo "built $name $version in $out/"
