"""Acceptance (issue 10): publish N with a gallery archive -> deploy N+1 -> roll back to N ->
restart, on the deployment simulator, with the REAL build (build/gdk_build.py), the REAL publish
(S3 in moto, greengrassv2 stubbed), the REAL deploy request (facefleet.cloud.deploy) and the
recipe's REAL Install script (sh + python3 -m venv + pip, offline: the wheels are stand-ins named
facefleet-0.1.0 whose code says which component version built them). At every step the device
must run the code of the component version it has and serve the enrolled people.
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import subprocess
import zipfile
from pathlib import Path

import boto3
import numpy as np
import pytest

from cloud.test_publish import COMPONENT, REGION, _capture, _expect_create, _gg, gdk_build, model_dir
from facefleet.cloud.deploy import RolloutPolicy, build_request
from facefleet.cloud.publish import publish
from facefleet.config import parse_component_config
from facefleet.errors import FacefleetError
from facefleet.recognition.gallery import Gallery
from greengrass.deployment import Nucleus, ProcessError, Started

PYTHON3 = shutil.which("python3", path="/usr/bin:/bin")  # the OS python the nucleus's sh finds


def stand_in_wheel(folder: Path, build: str, requires: tuple[str, ...] = (), name: str = "facefleet",
                   version: str = "0.1.0") -> Path:
    """A pure-Python wheel (PEP 427) with the package's name and version; ``BUILD`` tells which
    component version it belongs to; ``requires`` are its ``device`` extra's requirements."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}-{version}-py3-none-any.whl"
    dist = f"{name}-{version}.dist-info"
    meta = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}", "Provides-Extra: device",
            *(f'Requires-Dist: {r} ; extra == "device"' for r in requires)]
    files = {f"{name}/__init__.py": f'__version__ = "{version}"\nBUILD = "{build}"\n',
             f"{dist}/METADATA": "\n".join(meta) + "\n",
             f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: facefleet-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    record = [f"{n},sha256={base64.urlsafe_b64encode(hashlib.sha256(d.encode()).digest()).rstrip(b'=').decode()},{len(d)}"
              for n, d in files.items()]
    files[f"{dist}/RECORD"] = "\n".join([*record, f"{dist}/RECORD,,"]) + "\n"
    with zipfile.ZipFile(path, "w") as z:
        for n, d in files.items():
            z.writestr(n, d)
    return path


@pytest.fixture
def aws(monkeypatch):
    from moto import mock_aws

    for k in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(k, raising=False)
    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": REGION}.items():
        monkeypatch.setenv(k, v)
    with mock_aws():
        yield boto3.session.Session(region_name=REGION)


class Fleet:
    """The operator's side: build, publish (carrying gallery archives), revise the deployment."""

    def __init__(self, session, tmp_path: Path, assets: Path):
        self.session, self.tmp, self.models = session, tmp_path, model_dir(tmp_path, assets)
        self.published: list[str] = []
        self.recipes: dict[str, dict] = {}
        self.latest: dict | None = None  # the thing group's latest deployment (GetDeployment's components)

    def publish(self, version: str, archives: list[Path] = ()) -> dict:
        wheel = stand_in_wheel(self.tmp / "wheels" / version, build=version)
        build = gdk_build(self.tmp / f"build-{version}", self.models, wheel)
        gg, stub = _gg(self.session, self.published, self.recipes[self.published[-1]] if self.published else None)
        captured: list = []
        _capture(gg, captured)
        _expect_create(stub, version, captured)
        with stub:
            publish(gg=gg, s3=self.session.client("s3"), sts=self.session.client("sts"), region=REGION, component=COMPONENT,
                    bucket_prefix="ff", build_dir=build, version_spec=version, gallery_archives=list(archives),
                    sleep=lambda s: None)
        self.published.append(version)
        self.recipes[version] = captured[0]
        return captured[0]

    def deploy(self, version: str, merge: dict | None = None, reset: list[str] = ()) -> tuple[dict, str]:
        req = build_request(target_arn=f"arn:aws:iot:{REGION}:123456789012:thinggroup/lobby", component=COMPONENT,
                            version=version, latest=self.latest, merge=merge or {}, reset=list(reset),
                            policy=RolloutPolicy())
        self.latest = {"components": req["components"]}
        return req["components"][COMPONENT].get("configurationUpdate"), req["deploymentPolicies"]["failureHandlingPolicy"]

    def fetch(self, uri: str) -> bytes:
        bucket, key = uri[len("s3://"):].split("/", 1)
        return self.session.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read()


class Device:
    """The component's Run, reduced to what this scenario checks: the configuration passes the
    component's schema (else ERRORED, as the component reports at start), every configured
    gallery archive is in THIS version's artifacts folder and is merged, and which code the
    venv the Install script made runs."""

    def __init__(self, root: Path, links: Path):
        self.served: list[tuple[str, str, list[str]]] = []
        env = {"PATH": f"{Path(PYTHON3).parent}:/bin", "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(links),
               "PIP_NO_CACHE_DIR": "1", "HOME": str(root)}
        self.nucleus = Nucleus(root, COMPONENT, self.start, env=env)

    def start(self, s: Started) -> None:
        cfg = s.configuration
        try:
            parse_component_config(cfg, "(component configuration)")
        except FacefleetError as e:
            raise ProcessError(f"cannot serve: {e}") from None
        r = subprocess.run([str(s.work / "venv" / "bin" / "python"), "-c", "import facefleet; print(facefleet.BUILD)"],
                           capture_output=True, text=True, timeout=60, env=self.nucleus.env)
        if r.returncode != 0:
            raise ProcessError(f"venv python failed: {r.stderr.strip()[-200:]}")
        gallery = Gallery.open(s.work / cfg["gallery"], create=True)
        for name in cfg.get("gallery_archives") or []:
            if not (s.artifacts / name).is_file():
                raise ProcessError(f"gallery archive not found: {s.artifacts / name}")
            gallery.merge_archive(s.artifacts / name)
        self.served.append((s.version, r.stdout.strip(), sorted(gallery.names())))

    def deploy(self, fleet: Fleet, version: str, merge: dict | None = None, reset: list[str] = ()):
        update, policy = fleet.deploy(version, merge, reset)
        return self.nucleus.deploy(fleet.recipes[version], fleet.fetch, update, policy)


def _archive(tmp_path: Path) -> Path:
    g = Gallery.open(tmp_path / "people", create=True)
    rng = np.random.default_rng(7)
    g.add("ada", [rng.integers(0, 255, (112, 112, 3), dtype=np.uint8) for _ in range(2)])
    g.add("grace", [rng.integers(0, 255, (112, 112, 3), dtype=np.uint8)])
    archive = tmp_path / "lobby-people.tar.gz"
    g.export_archive(archive)
    return archive


@pytest.mark.skipif(PYTHON3 is None, reason="no python3 in /usr/bin or /bin")
def test_publish_deploy_next_roll_back_restart_serves_the_right_code_and_people(aws, tmp_path, assets):
    fleet = Fleet(aws, tmp_path, assets)
    device = Device(tmp_path / "greengrass", tmp_path / "links")
    n = device.nucleus

    fleet.publish("1.0.0", [_archive(tmp_path)])
    assert device.deploy(fleet, "1.0.0").status == "SUCCESSFUL", n.log
    assert device.served[-1] == ("1.0.0", "1.0.0", ["ada", "grace"])

    # N+1 is published WITHOUT the archive; its configuration is bad and arrives with the version
    # change, so nobody validates it: the new version errors at start, BROKEN, ROLLBACK to N
    fleet.publish("1.0.1")
    bad = device.deploy(fleet, "1.0.1", {"cameras": [{"id": "door", "source": "ftp://door"}]})
    assert (bad.status, bad.validated) == ("FAILED_ROLLBACK_COMPLETE", False)
    assert [line for line in n.log if "BROKEN" in line] == ["1.0.1 BROKEN"]
    assert (n.version, n.state) == ("1.0.0", "RUNNING")
    assert device.served[-1] == ("1.0.0", "1.0.0", ["ada", "grace"])  # N's code again, not N+1's

    n.restart()
    assert device.served[-1] == ("1.0.0", "1.0.0", ["ada", "grace"])

    # a good N+1 (the revision carries the failed one's merge: the operator resets the bad key);
    # N+1's artifacts folder holds the archive the configuration names
    assert device.deploy(fleet, "1.0.1", {"status_interval_s": 30}, reset=["/cameras"]).status == "SUCCESSFUL", n.log
    assert device.served[-1] == ("1.0.1", "1.0.1", ["ada", "grace"])
    assert n.configuration["gallery_archives"] == ["lobby-people.tar.gz"]

    # roll back to N by deploying it (a downgrade), then restart
    assert device.deploy(fleet, "1.0.0").status == "SUCCESSFUL"
    assert device.served[-1] == ("1.0.0", "1.0.0", ["ada", "grace"])
    n.restart()
    assert device.served[-1] == ("1.0.0", "1.0.0", ["ada", "grace"])
    assert n.configuration["status_interval_s"] == 30  # the revision carried the earlier --set

    # a device that joins the group now gets only the latest revision: same configuration, same people
    late = Device(tmp_path / "late", tmp_path / "links")
    update, policy = json.loads(json.dumps(fleet.latest["components"][COMPONENT]["configurationUpdate"])), "ROLLBACK"
    assert late.nucleus.deploy(fleet.recipes["1.0.0"], fleet.fetch, update, policy).status == "SUCCESSFUL"
    assert late.served[-1] == ("1.0.0", "1.0.0", ["ada", "grace"])
    assert late.nucleus.configuration["status_interval_s"] == 30


@pytest.mark.skipif(PYTHON3 is None, reason="no python3 in /usr/bin or /bin")
def test_install_keeps_numpy_below_2_where_hailort_is_installed(tmp_path):
    """Item 12: python3-hailort's extension is built against numpy 1.x (docs/greengrass.md cites the
    sources); where ``import hailo_platform`` works for the OS python3, the Install script keeps
    numpy < 2 in the venv; elsewhere the newest numpy the requirement allows is fine."""
    links = tmp_path / "links"
    for v in ("1.26.4", "2.1.0"):
        stand_in_wheel(links, build="numpy", name="numpy", version=v)
    hailo = tmp_path / "os-site" / "hailo_platform"
    hailo.mkdir(parents=True)
    (hailo / "__init__.py").write_text("")
    import yaml

    text = (Path(__file__).resolve().parents[2] / "recipes" / f"{COMPONENT}.yaml").read_text().replace(
        "{COMPONENT_VERSION}", "0.1.0")
    recipe = yaml.safe_load(text)
    files = {}
    for v in ("1.0.0", "1.0.1"):
        w = stand_in_wheel(tmp_path / "wheels" / v, build=v, requires=("numpy>=1.26",))
        files[v] = w.read_bytes()
    installed = []

    def start(s: Started) -> None:
        site = next((s.work / "venv" / "lib").glob("python3*/site-packages"))
        installed.append(sorted(p.name for p in site.glob("numpy-*.dist-info")))

    env = {"PATH": f"{Path(PYTHON3).parent}:/bin", "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(links),
           "PIP_NO_CACHE_DIR": "1", "HOME": str(tmp_path)}
    n = Nucleus(tmp_path / "gg", COMPONENT, start, env=env)
    for v, hailort in (("1.0.0", False), ("1.0.1", True)):
        r = dict(recipe, ComponentVersion=v)
        for m in r["Manifests"]:
            m["Artifacts"] = [{"URI": "s3://b/facefleet-0.1.0-py3-none-any.whl"}]
        n.env["PYTHONPATH"] = str(tmp_path / "os-site") if hailort else ""
        assert n.deploy(r, lambda uri, v=v: files[v]).status == "SUCCESSFUL", n.log
    assert installed == [["numpy-2.1.0.dist-info"], ["numpy-1.26.4.dist-info"]]
