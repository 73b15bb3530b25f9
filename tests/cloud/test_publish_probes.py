"""The quality canary's probe sets travel with their models: the GDK build copies
``<model>.probes.npz`` found beside a model the recipe names, and publish adds it to every
manifest that ships the model, content-addressed like the model, with its digest."""

import base64
import hashlib

from facefleet.recognition.canary import probes_path

from .test_publish import _capture, _expect_create, _gg, _run, gdk_build, model_dir


def test_the_probe_set_is_built_and_published_beside_its_model(mocked_aws, tmp_path, assets):
    models = model_dir(tmp_path, assets)
    probes = probes_path(models / "w600k_mbf_fp32.onnx")
    probes.write_bytes(b"probe set stand-in" * 50)  # what ships is the file; its content is tests/test_canary.py's
    wheel = tmp_path / "facefleet.whl"
    wheel.write_bytes(b"PK wheel stand-in" * 100)
    build = gdk_build(tmp_path / "greengrass-build", models, wheel)
    assert list(build.glob("artifacts/*/*/w600k_mbf_fp32.probes.npz"))
    gg, stub = _gg(mocked_aws, [])
    captured: list = []
    _capture(gg, captured)
    _expect_create(stub, "1.0.0", captured)
    with stub:
        _run(mocked_aws, gg, build, version_spec="1.0.0")
    digest = hashlib.sha256(probes.read_bytes())
    for manifest in captured[0]["Manifests"]:
        names = [a["URI"].rsplit("/", 1)[-1] for a in manifest["Artifacts"]]
        shipped = [a for a in manifest["Artifacts"] if a["URI"].endswith("/w600k_mbf_fp32.probes.npz")]
        assert ("w600k_mbf_fp32.onnx" in names) == (len(shipped) == 1)
        for a in shipped:
            assert a["URI"].endswith(f"/models/sha256/{digest.hexdigest()}/w600k_mbf_fp32.probes.npz")
            assert a["Digest"] == base64.b64encode(digest.digest()).decode()
    assert any("w600k_mbf_fp32.onnx" in str(m) for m in captured[0]["Manifests"])
