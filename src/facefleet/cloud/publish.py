"""Publish a component version the way ``gdk component publish`` does, and more.

Like GDK: bucket ``{prefix}-{region}-{account}``, ``NEXT_PATCH`` (highest existing version +1
patch, else 1.0.0), artifacts under ``<name>/<version>/``, ``create_component_version`` with
the recipe inline. Beyond GDK: model files (HEF/ONNX and their ModelSpec JSON) go to
content-addressed keys and are uploaded only when absent; big files go multipart with a
progress bar; every artifact in the recipe carries its digest; a quantized recognizer whose
fidelity gate did not pass is refused; and the command waits until the version is DEPLOYABLE.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from facefleet.cloud.aws import error_code
from facefleet.errors import FacefleetError
from facefleet.modelspec import sha256_file

log = logging.getLogger(__name__)

MODEL_SUFFIXES = (".hef", ".onnx")
PROBES_SUFFIX = ".probes.npz"  # facefleet.recognition.canary.SUFFIX
SEMVER = re.compile(r"^(\d+)\.(\d+)\.(\d+)$")
MULTIPART_BYTES = 8 << 20


@dataclass
class Artifact:
    path: Path
    sha256: str
    key: str = ""
    uploaded: bool = False

    @property
    def digest(self) -> str:
        """Greengrass's form: base64 of the raw SHA-256."""
        return base64.b64encode(bytes.fromhex(self.sha256)).decode()


@dataclass
class PublishResult:
    component: str
    version: str
    bucket: str
    arn: str = ""
    state: str = ""
    artifacts: list[Artifact] = field(default_factory=list)
    recipe: dict = field(default_factory=dict)


def existing_versions(gg, component_arn: str) -> list[tuple[int, int, int]]:
    versions = []
    for page in gg.get_paginator("list_component_versions").paginate(arn=component_arn):
        for v in page.get("componentVersions", []):
            m = SEMVER.match(v.get("componentVersion", ""))
            if m:
                versions.append(tuple(int(x) for x in m.groups()))
    return sorted(versions)


def next_patch(gg, component_arn: str, versions: list[tuple[int, int, int]] | None = None) -> str:
    """GDK's NEXT_PATCH: the highest published version + 1 patch, else 1.0.0."""
    versions = existing_versions(gg, component_arn) if versions is None else versions
    if not versions:
        return "1.0.0"
    major, minor, patch = max(versions)
    return f"{major}.{minor}.{patch + 1}"


def carried_galleries(gg, component_arn: str, version: tuple[int, int, int]) -> tuple[list[str], dict[str, dict]]:
    """The gallery archives a published version ships: their names (its DefaultConfiguration) and,
    per name, its artifact entry (URI, digest). Every later version ships them again, so a name a
    device keeps in its configuration always resolves in the CURRENT version's artifacts folder
    ({artifacts:path} is per version: NucleusPaths.java:130-140)."""
    arn = f"{component_arn}:versions:{'.'.join(map(str, version))}"
    blob = gg.get_component(arn=arn, recipeOutputFormat="JSON")["recipe"]
    recipe = json.loads(blob.decode() if isinstance(blob, bytes) else blob)
    names = list(((recipe.get("ComponentConfiguration") or {}).get("DefaultConfiguration") or {}).get("gallery_archives") or [])
    entries: dict[str, dict] = {}
    for manifest in recipe.get("Manifests") or []:
        for art in manifest.get("Artifacts") or []:
            name = art.get("URI", "").rsplit("/", 1)[-1]
            if name in names:
                entries[name] = {k: v for k, v in art.items() if k in ("URI", "Digest", "Algorithm", "Permission")}
    return [n for n in names if n in entries], entries


def is_model(path: Path) -> bool:
    """Model files, their ModelSpec sidecars (``x.hef`` + ``x.json``) and quality-canary probe
    sets (``x.probes.npz``, facefleet build probes) are content-addressed."""
    if path.suffix in MODEL_SUFFIXES:
        return True
    if path.name.endswith(PROBES_SUFFIX):
        return True
    return path.suffix == ".json" and any(path.with_suffix(s).exists() for s in MODEL_SUFFIXES)


def add_probe_artifacts(recipe: dict, files: list[Path]) -> None:
    """A model's quality-canary probe set travels with it: every manifest that ships ``x.onnx``
    (or ``.hef``) also gets ``x.probes.npz`` when the build holds one (facefleet build probes)."""
    have = {f.name for f in files}
    for manifest in recipe.get("Manifests", []):
        arts = manifest.setdefault("Artifacts", [])
        named = {a.get("URI", "").rsplit("/", 1)[-1] for a in arts}
        for name in sorted(named):
            probes = Path(name).stem + PROBES_SUFFIX
            if Path(name).suffix in MODEL_SUFFIXES and probes in have and probes not in named:
                arts.append({"URI": f"s3://BUCKET_NAME/{probes}"})


def check_fidelity(files: list[Path]) -> None:
    """Every quantized recognizer (a HEF with a recognizer ModelSpec) must carry a passed
    fidelity gate (``facefleet build fidelity --model-json``) whose model is this very file."""
    from facefleet.modelspec import ModelSpec

    for hef in (f for f in files if f.suffix == ".hef"):
        sidecar = hef.with_suffix(".json")
        if not sidecar.is_file():
            raise FacefleetError(f"{hef.name}: no ModelSpec {sidecar.name} beside it (facefleet build hef writes one)")
        try:
            spec = ModelSpec.model_validate(json.loads(sidecar.read_text()))
        except Exception as e:
            raise FacefleetError(f"{sidecar.name}: invalid ModelSpec: {str(e).splitlines()[0]}") from None
        if spec.sha256 is not None and spec.sha256 != sha256_file(hef):
            raise FacefleetError(f"{sidecar.name} describes another file than {hef.name} (sha256 differs): rebuild")
        if spec.kind != "recognizer":
            continue
        fid = spec.provenance.get("fidelity")
        if not fid:
            raise FacefleetError(f"refusing to publish {hef.name}: no fidelity report "
                                 f"(run: facefleet build fidelity ... --model-json {sidecar.name})")
        if not fid.get("passed"):
            raise FacefleetError(f"refusing to publish {hef.name}: its fidelity gate FAILED "
                                 "(quantized match rate too far below float; see the fidelity report)")


def read_build(build_dir: Path, component: str) -> tuple[dict, Path, list[Path]]:
    """The GDK build output: the recipe (YAML) and ``artifacts/<name>/<build version>/``.
    ``gdk component publish`` adds its own ``<name>-<version>.<ext>`` beside the build's recipe
    (GDK PublishRecipeTransformer.create_publish_recipe_file): that one is not the build's."""
    found = sorted((build_dir / "recipes").glob("*.y*ml")) + sorted((build_dir / "recipes").glob("*.json"))
    gdk_published = re.compile(re.escape(component) + r"-\d+\.\d+\.\d+\.(ya?ml|json)$")
    recipes = [r for r in found if not gdk_published.match(r.name)]
    if len(recipes) != 1:
        raise FacefleetError(f"{build_dir}/recipes: expected one recipe, found {len(recipes)} (run the build first)")
    try:
        recipe = yaml.safe_load(recipes[0].read_text())
    except yaml.YAMLError as e:
        raise FacefleetError(f"{recipes[0]}: invalid YAML: {str(e).splitlines()[0]}") from None
    if recipe.get("ComponentName") != component:
        raise FacefleetError(f"{recipes[0].name} is for {recipe.get('ComponentName')!r}, not {component!r}")
    art_dir = build_dir / "artifacts" / component / str(recipe.get("ComponentVersion"))
    if not art_dir.is_dir():
        raise FacefleetError(f"artifacts folder {art_dir} not found (run the build first)")
    return recipe, art_dir, sorted(p for p in art_dir.iterdir() if p.is_file())


def render_recipe(recipe: dict, version: str, artifacts: dict[str, Artifact], bucket: str) -> dict:
    """The recipe to publish: the version, and every artifact's S3 URI and digest."""
    out = json.loads(json.dumps(recipe))
    out["ComponentVersion"] = version
    for manifest in out.get("Manifests", []):
        for art in manifest.get("Artifacts", []):
            name = art["URI"].rsplit("/", 1)[-1]
            if name not in artifacts:
                raise FacefleetError(f"the recipe names artifact {name}, which the build did not produce")
            a = artifacts[name]
            art["URI"] = f"s3://{bucket}/{a.key}"
            art["Digest"] = a.digest
            art["Algorithm"] = "SHA-256"
    return out


def ensure_bucket(s3, bucket: str, region: str) -> None:
    try:
        s3.head_bucket(Bucket=bucket)
        return
    except Exception as e:
        if error_code(e) not in ("404", "NoSuchBucket", "NotFound"):
            raise
    kwargs: dict[str, Any] = {"Bucket": bucket}
    if region != "us-east-1":
        kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
    s3.create_bucket(**kwargs)
    log.info("created bucket %s", bucket)


def _exists(s3, bucket: str, key: str) -> bool:
    try:
        s3.head_object(Bucket=bucket, Key=key)
        return True
    except Exception as e:
        if error_code(e) in ("404", "NoSuchKey", "NotFound"):
            return False
        raise


def upload(s3, bucket: str, a: Artifact, progress: Callable[[str, int], Callable[[int], None]] | None = None) -> None:
    from boto3.s3.transfer import TransferConfig

    size = a.path.stat().st_size
    callback = progress(a.path.name, size) if progress else None
    s3.upload_file(str(a.path), bucket, a.key, Callback=callback,
                   ExtraArgs={"Metadata": {"sha256": a.sha256}},
                   Config=TransferConfig(multipart_threshold=MULTIPART_BYTES, multipart_chunksize=MULTIPART_BYTES))
    a.uploaded = True


def wait_deployable(gg, arn: str, sleep: Callable[[float], None] = time.sleep, interval_s: float = 2.0,
                    max_polls: int = 90) -> str:
    for _ in range(max_polls):
        status = gg.describe_component(arn=arn).get("status") or {}
        state = status.get("componentState", "")
        if state == "DEPLOYABLE":
            return state
        if state == "FAILED":
            errors = status.get("errors") or {}
            detail = "; ".join(f"{k}: {v}" for k, v in errors.items()) or status.get("message", "")
            raise FacefleetError(f"component version {arn.rsplit(':', 1)[-1]} FAILED: {detail}")
        sleep(interval_s)
    raise FacefleetError(f"component {arn} not DEPLOYABLE after {max_polls} checks (state {state or 'unknown'})")


def publish(**kw) -> PublishResult:
    """Upload the build's artifacts, create the component version, wait until it is deployable.
    Every gallery archive it ships (new or carried) is rewritten without the names erased from
    the fleet (``facefleet gallery erase``: ``galleries/erased.json`` in the bucket)."""
    with tempfile.TemporaryDirectory(prefix="facefleet-publish-") as work:
        return _publish(work=Path(work), **kw)


def _publish(*, gg, s3, sts, region: str, component: str, version_spec: str, bucket_prefix: str, build_dir: Path,
             gallery_archives: list[Path] = (), progress=None, wait: bool = True,
             sleep: Callable[[float], None] = time.sleep, carry_galleries: bool = True, work: Path) -> PublishResult:
    from facefleet.cloud.erase import read_erased, scrub_archive, scrub_carried

    account = sts.get_caller_identity()["Account"]
    bucket = f"{bucket_prefix}-{region}-{account}"
    component_arn = f"arn:aws:greengrass:{region}:{account}:components:{component}"
    recipe, _art_dir, files = read_build(build_dir, component)
    for extra in gallery_archives:
        if not extra.is_file():
            raise FacefleetError(f"gallery archive not found: {extra}")
    check_fidelity(files)  # before anything is uploaded
    versions = existing_versions(gg, component_arn)
    version = next_patch(gg, component_arn, versions) if version_spec == "NEXT_PATCH" else version_spec
    if not SEMVER.match(version):
        raise FacefleetError(f"version {version!r} is not MAJOR.MINOR.PATCH")
    erased = read_erased(s3, bucket)
    gallery_archives = [scrub_archive(a, erased, work / "new") for a in gallery_archives] if erased else list(gallery_archives)
    new_names = {extra.name for extra in gallery_archives}
    carried_names, carried = (carried_galleries(gg, component_arn, max(versions)) if carry_galleries and versions
                              else ([], {}))
    carried_names = [n for n in carried_names if n not in new_names]  # a new archive of the same name replaces it
    if erased:  # a carried archive holding an erased name ships rewritten (a new content-addressed key)
        rewritten = [(n, scrub_carried(s3, carried[n], erased, work)) for n in carried_names]
        gallery_archives = [*gallery_archives, *(p for _, p in rewritten if p is not None)]
        carried_names = [n for n, p in rewritten if p is None]
        new_names = {extra.name for extra in gallery_archives}
    files = files + list(gallery_archives)
    arts: dict[str, Artifact] = {}
    galleries = set(new_names)
    for f in files:
        a = Artifact(f, sha256_file(f))
        if f.name in galleries:
            a.key = f"galleries/sha256/{a.sha256}/{f.name}"
        else:
            a.key = f"models/sha256/{a.sha256}/{f.name}" if is_model(f) else f"{component}/{version}/{f.name}"
        arts[f.name] = a
    default = recipe.setdefault("ComponentConfiguration", {}).setdefault("DefaultConfiguration", {})
    default["gallery_archives"] = [*carried_names, *(x.name for x in gallery_archives)]
    for extra in gallery_archives:  # fleet enrollment: shipped to every platform, named by the configuration
        for manifest in recipe.get("Manifests", []):
            manifest.setdefault("Artifacts", []).append({"URI": f"s3://BUCKET_NAME/{extra.name}"})
    add_probe_artifacts(recipe, files)
    rendered = render_recipe(recipe, version, arts, bucket)
    for manifest in rendered.get("Manifests", []):
        manifest.setdefault("Artifacts", []).extend(dict(carried[n]) for n in carried_names)
    if carried_names:
        log.info("carrying gallery archives of %s: %s", ".".join(map(str, max(versions))), ", ".join(carried_names))
    text = json.dumps(rendered, indent=1).encode()
    if len(text) > 16_000:
        raise FacefleetError(f"the rendered recipe is {len(text)} bytes; Greengrass allows 16,000")
    ensure_bucket(s3, bucket, region)
    used = {a.path.name for a in arts.values()}
    for name in sorted(used):
        a = arts[name]
        if (is_model(a.path) or a.path.name in galleries) and _exists(s3, bucket, a.key):
            log.info("%s already in s3://%s/%s (content-addressed): not uploaded", name, bucket, a.key)
            continue
        upload(s3, bucket, a, progress)
    result = PublishResult(component, version, bucket, artifacts=list(arts.values()), recipe=rendered)
    try:
        resp = gg.create_component_version(inlineRecipe=text)
    except Exception as e:
        if error_code(e) == "ConflictException":
            raise FacefleetError(f"{component} {version} already exists: publish NEXT_PATCH or a new version") from None
        raise
    result.arn = resp["arn"]
    result.state = wait_deployable(gg, result.arn, sleep) if wait else (resp.get("status") or {}).get("componentState", "")
    return result
