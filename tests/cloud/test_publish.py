"""facefleet publish: GDK-compatible versions and layout, content-addressed models, digests, the fidelity gate."""

import base64
import hashlib
import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from botocore.stub import ANY, Stubber

from facefleet.cloud.publish import publish
from facefleet.errors import FacefleetError
from facefleet.modelspec import resolve_model

ROOT = Path(__file__).resolve().parents[2]
COMPONENT = "com.facefleet.FaceRecognition"
REGION = "eu-west-1"
NOW = datetime(2026, 11, 22, tzinfo=UTC)


def _hef_spec(onnx_spec, hef: Path, fidelity: dict | None) -> dict:
    """The ModelSpec 'facefleet build hef' writes beside a HEF (normalization in the HEF, uint8 NHWC)."""
    d = onnx_spec.model_dump(mode="json")
    d.update(name=hef.stem, format="hef", file=hef.name, sha256=hashlib.sha256(hef.read_bytes()).hexdigest(),
             normalization=None)
    d["input"].update(dtype="uint8", layout="NHWC", width=d["input"]["width"] or 640, height=d["input"]["height"] or 640)
    if d.get("detector"):
        d["detector"]["heads_order"] = "NHWC"
    if fidelity is not None:
        d["provenance"] = {"fidelity": fidelity}
    return d


def model_dir(tmp_path: Path, assets: Path) -> Path:
    """The model files the recipe names: the ONNX fallback and HEF stand-ins with their ModelSpecs
    (the recognizer's with a passed fidelity gate)."""
    models = tmp_path / "models"
    models.mkdir(exist_ok=True)
    for name in ("det_500m.onnx", "w600k_mbf_fp32.onnx"):
        if not (models / name).exists():
            (models / name).symlink_to(assets / "models" / name)
    specs = {"scrfd_2.5g": resolve_model(assets / "models" / "scrfd_2.5g_rawheads.onnx").spec,
             "w600k_mbf": resolve_model(assets / "models" / "w600k_mbf_fp32.onnx").spec}
    for stem, spec in specs.items():
        hef = models / f"{stem}.hef"
        hef.write_bytes(f"HEF stand-in for {stem}".encode() * 1000)
        fidelity = {"passed": True, "recommended": {"match_threshold": 0.43}} if spec.kind == "recognizer" else None
        (models / f"{stem}.json").write_text(json.dumps(_hef_spec(spec, hef, fidelity)))
    return models


def gdk_build(out: Path, models: Path, wheel: Path) -> Path:
    """The real build script (what 'gdk component build' runs)."""
    r = subprocess.run([sys.executable, str(ROOT / "build" / "gdk_build.py"), "--out", str(out), "--model-dir", str(models),
                        "--wheel", str(wheel)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return out


@pytest.fixture
def build_dir(tmp_path, assets):
    wheel = tmp_path / "facefleet.whl"
    wheel.write_bytes(b"PK wheel stand-in" * 100)
    return gdk_build(tmp_path / "greengrass-build", model_dir(tmp_path, assets), wheel)


def _gg(session, existing: list[str], latest_recipe: dict | None = None):
    """ListComponentVersions, then GetComponent of the highest version (its gallery archives are carried)."""
    gg = session.client("greengrassv2")
    stub = Stubber(gg)
    base = f"arn:aws:greengrass:{REGION}:123456789012:components:{COMPONENT}"
    stub.add_response("list_component_versions",
                      {"componentVersions": [{"componentName": COMPONENT, "componentVersion": v} for v in existing]},
                      {"arn": base})
    if existing:
        top = max(existing, key=lambda v: tuple(map(int, v.split("."))))
        recipe = latest_recipe or {"ComponentName": COMPONENT, "ComponentVersion": top}
        stub.add_response("get_component", {"recipeOutputFormat": "JSON", "recipe": json.dumps(recipe).encode()},
                          {"arn": f"{base}:versions:{top}", "recipeOutputFormat": "JSON"})
    return gg, stub


def _expect_create(stub, version: str, captured: list):
    arn = f"arn:aws:greengrass:{REGION}:123456789012:components:{COMPONENT}:versions:{version}"
    stub.add_response("create_component_version", {"arn": arn, "componentName": COMPONENT, "componentVersion": version,
                                                   "creationTimestamp": NOW, "status": {"componentState": "REQUESTED"}},
                      {"inlineRecipe": ANY})
    stub.add_response("describe_component", {"arn": arn, "status": {"componentState": "INITIATED"}}, {"arn": arn})
    stub.add_response("describe_component", {"arn": arn, "status": {"componentState": "DEPLOYABLE"}}, {"arn": arn})
    return arn


def _capture(gg, captured: list):
    gg.meta.events.register("provide-client-params.greengrassv2.CreateComponentVersion",
                            lambda params, **kw: captured.append(json.loads(params["inlineRecipe"])))


def _run(session, gg, build_dir, **kw):
    return publish(gg=gg, s3=session.client("s3"), sts=session.client("sts"), region=REGION, component=COMPONENT,
                   bucket_prefix="ff-components", build_dir=build_dir, sleep=lambda s: None, **kw)


def test_publish_like_gdk_with_digests_and_content_addressed_models(mocked_aws, build_dir, tmp_path, assets, load_detector):
    gg, stub = _gg(mocked_aws, ["1.0.0", "1.0.4", "0.9.12"])
    captured: list = []
    _capture(gg, captured)
    arn = _expect_create(stub, "1.0.5", captured)
    with stub:
        res = _run(mocked_aws, gg, build_dir, version_spec="NEXT_PATCH")
        stub.assert_no_pending_responses()
    assert res.version == "1.0.5" and res.arn == arn and res.state == "DEPLOYABLE"
    assert res.bucket == "ff-components-eu-west-1-123456789012"
    recipe = captured[0]
    assert recipe["ComponentVersion"] == "1.0.5"
    s3 = mocked_aws.client("s3")
    uris = [a for m in recipe["Manifests"] for a in m["Artifacts"]]
    for art in uris:
        bucket, key = art["URI"][5:].split("/", 1)
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        assert art["Digest"] == base64.b64encode(hashlib.sha256(body).digest()).decode() and art["Algorithm"] == "SHA-256"
        name = key.rsplit("/", 1)[-1]
        if name.endswith((".hef", ".onnx", ".json")):
            assert key == f"models/sha256/{hashlib.sha256(body).hexdigest()}/{name}"
        else:
            assert key == f"{COMPONENT}/1.0.5/{name}"  # GDK's layout for the rest (the wheel)
    # the recipe still satisfies GDK's schema (GDK lowercases keys first)
    import jsonschema

    def lower(o):
        return {k.lower(): lower(v) for k, v in o.items()} if isinstance(o, dict) else [lower(v) for v in o] if isinstance(o, list) else o

    jsonschema.validate(lower(recipe), json.loads((assets.parent / "reference" / "gdk-schemas" / "recipe_schema.json").read_text()))

    # a second version: unchanged models are not uploaded again; a gallery archive ships and is named
    from facefleet.recognition.gallery import Gallery
    from facefleet.recognition.loader import enroll_images

    g = Gallery.open(tmp_path / "g", create=True)
    enroll_images(g, load_detector(), "obama", [assets / "enroll" / "obama.jpg"])
    archive = tmp_path / "lobby-people.tar.gz"
    g.export_archive(archive)
    gg2, stub2 = _gg(mocked_aws, ["1.0.0", "1.0.5"], recipe)
    captured2: list = []
    _capture(gg2, captured2)
    _expect_create(stub2, "1.0.6", captured2)
    with stub2:
        res2 = _run(mocked_aws, gg2, build_dir, version_spec="NEXT_PATCH", gallery_archives=[archive])
    uploaded = {a.path.name for a in res2.artifacts if a.uploaded}
    assert uploaded == {"facefleet-0.1.0-py3-none-any.whl", "lobby-people.tar.gz"}
    assert captured2[0]["ComponentConfiguration"]["DefaultConfiguration"]["gallery_archives"] == ["lobby-people.tar.gz"]
    sha = hashlib.sha256(archive.read_bytes()).hexdigest()
    for m in captured2[0]["Manifests"]:
        (art,) = [a for a in m["Artifacts"] if a["URI"].endswith("/lobby-people.tar.gz")]
        assert art["URI"] == f"s3://{res2.bucket}/galleries/sha256/{sha}/lobby-people.tar.gz"  # content-addressed

    # item 4: the next version, published without the archive, ships it again (same object, same
    # digest), so the name devices keep in their configuration resolves in ITS artifacts folder
    gg3, stub3 = _gg(mocked_aws, ["1.0.0", "1.0.5", "1.0.6"], captured2[0])
    captured3: list = []
    _capture(gg3, captured3)
    _expect_create(stub3, "1.0.7", captured3)
    with stub3:
        res3 = _run(mocked_aws, gg3, build_dir, version_spec="NEXT_PATCH")
    assert {a.path.name for a in res3.artifacts if a.uploaded} == {"facefleet-0.1.0-py3-none-any.whl"}
    assert captured3[0]["ComponentConfiguration"]["DefaultConfiguration"]["gallery_archives"] == ["lobby-people.tar.gz"]
    for m2, m3 in zip(captured2[0]["Manifests"], captured3[0]["Manifests"], strict=True):
        assert [a for a in m3["Artifacts"] if a["URI"].endswith("/lobby-people.tar.gz")] == [
            a for a in m2["Artifacts"] if a["URI"].endswith("/lobby-people.tar.gz")]


@pytest.mark.parametrize(("fidelity", "needle"), [
    ({"passed": False}, "fidelity gate FAILED"),
    (None, "no fidelity report"),
])
def test_a_failed_or_missing_gate_is_refused_before_any_upload(mocked_aws, build_dir, fidelity, needle):
    arts = build_dir / "artifacts" / COMPONENT / "0.1.0"
    spec = json.loads((arts / "w600k_mbf.json").read_text())
    if fidelity is None:
        spec["provenance"].pop("fidelity")
    else:
        spec["provenance"]["fidelity"] = fidelity
    (arts / "w600k_mbf.json").write_text(json.dumps(spec))
    gg = mocked_aws.client("greengrassv2")
    with Stubber(gg), pytest.raises(FacefleetError, match=needle):
        _run(mocked_aws, gg, build_dir, version_spec="1.2.3")
    assert mocked_aws.client("s3").list_buckets()["Buckets"] == []  # nothing was uploaded


def test_stale_model_json_and_failed_version(mocked_aws, build_dir):
    arts = build_dir / "artifacts" / COMPONENT / "0.1.0"
    (arts / "w600k_mbf.hef").write_bytes(b"a different HEF")
    gg = mocked_aws.client("greengrassv2")
    with Stubber(gg), pytest.raises(FacefleetError, match="sha256 differs"):
        _run(mocked_aws, gg, build_dir, version_spec="1.2.3")


def test_failed_component_reports_its_errors(mocked_aws, build_dir):
    gg, stub = _gg(mocked_aws, [])
    arn = f"arn:aws:greengrass:{REGION}:123456789012:components:{COMPONENT}:versions:2.0.0"
    stub.add_response("create_component_version", {"arn": arn, "componentName": COMPONENT, "componentVersion": "2.0.0",
                                                   "creationTimestamp": NOW, "status": {"componentState": "REQUESTED"}},
                      {"inlineRecipe": ANY})
    stub.add_response("describe_component", {"arn": arn, "status": {"componentState": "FAILED", "errors": {
        "s3://ff/x.whl": "ACCESS_DENIED: the artifact could not be read"}}}, {"arn": arn})
    with stub, pytest.raises(FacefleetError, match=r"2\.0\.0 FAILED: s3://ff/x\.whl: ACCESS_DENIED"):
        _run(mocked_aws, gg, build_dir, version_spec="2.0.0")


def test_cli_errors(no_credentials_env, tmp_path):
    r = subprocess.run([sys.executable, "-m", "facefleet", "publish", "--gdk-config", str(tmp_path / "none.json")],
                       capture_output=True, text=True, env=no_credentials_env, timeout=60)
    assert r.returncode == 1 and "none.json not found" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run([sys.executable, "-m", "facefleet", "publish", "--gdk-config", str(ROOT / "gdk-config.json"),
                        "--skip-build", "--build-dir", str(tmp_path)], capture_output=True, text=True, env=no_credentials_env,
                       timeout=60)
    assert r.returncode == 1 and "AWS credentials not found" in r.stderr.strip().splitlines()[-1]


def test_skip_build_after_a_real_gdk_publish(mocked_aws, build_dir):
    """Item 13: 'gdk component publish' writes its own <name>-<version>.<ext> beside the build's
    recipe (GDK 1.6.2 PublishRecipeTransformer.create_publish_recipe_file); publish --skip-build
    must still find the build's one."""
    built = next((build_dir / "recipes").iterdir())
    (build_dir / "recipes" / f"{COMPONENT}-1.0.3.yaml").write_text(built.read_text().replace("0.1.0", "1.0.3"))
    gg, stub = _gg(mocked_aws, ["1.0.3"])
    captured: list = []
    _capture(gg, captured)
    _expect_create(stub, "1.0.4", captured)
    with stub:
        res = _run(mocked_aws, gg, build_dir, version_spec="NEXT_PATCH")
    assert res.version == "1.0.4" and captured[0]["ComponentVersion"] == "1.0.4"
