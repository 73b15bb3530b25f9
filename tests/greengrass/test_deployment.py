"""The deployment simulator's own semantics (each cited in deployment.py), checked on small recipes."""

import base64
import hashlib
import json

import pytest

from greengrass.deployment import Nucleus, ProcessError

NAME = "com.example.Thing"


def _recipe(version: str, defaults: dict, files: dict[str, bytes] | None = None, install: str = "") -> dict:
    arts = [{"URI": f"s3://b/{NAME}/{version}/{n}", "Digest": base64.b64encode(hashlib.sha256(d).digest()).decode(),
             "Algorithm": "SHA-256"} for n, d in (files or {}).items()]
    life = {"Run": {"Script": "true"}}
    if install:
        life["Install"] = {"Script": install}
    return {"ComponentName": NAME, "ComponentVersion": version,
            "ComponentConfiguration": {"DefaultConfiguration": defaults},
            "Manifests": [{"Platform": {"os": "linux", "architecture": "amd64"}, "Lifecycle": life, "Artifacts": arts}]}


class Store(dict):
    def fetch(self, uri: str) -> bytes:
        return self[uri.rsplit("/", 1)[-1]]


def _nucleus(tmp_path, start=lambda s: None, **kw) -> Nucleus:
    return Nucleus(tmp_path / "gg", NAME, start, **kw)


def test_new_version_defaults_never_overwrite_reset_and_merge_do_and_removed_keys_persist(tmp_path):
    n = _nucleus(tmp_path)
    assert n.deploy(_recipe("1.0.0", {"a": 1, "b": {"c": 2}, "old": "x", "list": [1, 2]}), Store().fetch).status == "SUCCESSFUL"
    v2 = _recipe("1.0.1", {"a": 9, "b": {"c": 9, "d": 4}, "new": 5, "list": [3]})
    assert n.deploy(v2, Store().fetch).status == "SUCCESSFUL"
    assert n.configuration == {"a": 1, "b": {"c": 2, "d": 4}, "old": "x", "new": 5, "list": [1, 2]}
    assert n.deploy(v2, Store().fetch, {"reset": ["/a", "/list"], "merge": json.dumps({"b": {"c": 7}})}).status == "SUCCESSFUL"
    assert n.configuration == {"a": 9, "b": {"c": 7, "d": 4}, "old": "x", "new": 5, "list": [3]}
    assert n.deploy(v2, Store().fetch, {"reset": [""]}).status == "SUCCESSFUL"  # "" resets the whole document
    assert n.configuration == {"a": 9, "b": {"c": 9, "d": 4}, "new": 5, "list": [3]}


def test_artifacts_path_is_per_version_and_work_path_is_shared(tmp_path):
    files = {"f.txt": b"one"}
    n = _nucleus(tmp_path)
    install = "echo {artifacts:path} >> {work:path}/installs; test -f {artifacts:path}/f.txt"
    assert n.deploy(_recipe("1.0.0", {}, files, install), Store(files).fetch).status == "SUCCESSFUL"
    assert n.deploy(_recipe("1.1.0", {}, files, install), Store(files).fetch).status == "SUCCESSFUL"
    lines = (n.work_path() / "installs").read_text().split()
    assert [p.rsplit("/", 2)[-2:] for p in lines] == [[NAME, "1.0.0"], [NAME, "1.1.0"]]
    bad = _recipe("1.2.0", {}, {"f.txt": b"other"})
    assert n.deploy(bad, Store(files).fetch).status == "FAILED_NO_STATE_CHANGE"  # digest mismatch
    assert n.version == "1.1.0"


def test_validation_only_without_a_version_change(tmp_path):
    asked: list[dict] = []

    def validate(cfg):
        asked.append(cfg)
        return cfg.get("x", 0) >= 0, "x must be >= 0"

    n = _nucleus(tmp_path, validate=validate)
    n.deploy(_recipe("1.0.0", {"x": 1}), Store().fetch)
    r = n.deploy(_recipe("1.0.0", {"x": 1}), Store().fetch, {"merge": '{"x": -1}'})
    assert (r.status, r.validated, n.configuration) == ("FAILED_NO_STATE_CHANGE", True, {"x": 1})
    r = n.deploy(_recipe("1.0.1", {"x": 1}), Store().fetch, {"merge": '{"x": -1}'})
    assert (r.status, r.validated, n.configuration) == ("SUCCESSFUL", False, {"x": -1})  # never asked
    assert len(asked) == 1


@pytest.mark.parametrize(("policy", "status", "version", "state"), [
    ("ROLLBACK", "FAILED_ROLLBACK_COMPLETE", "1.0.0", "RUNNING"),
    ("DO_NOTHING", "FAILED_ROLLBACK_NOT_REQUESTED", "1.0.1", "BROKEN"),
])
def test_errored_three_times_is_broken_and_fails_the_deployment(tmp_path, policy, status, version, state):
    def start(s):
        if s.configuration.get("x", 0) < 0:
            raise ProcessError("x must be >= 0")

    n = _nucleus(tmp_path, start)
    n.deploy(_recipe("1.0.0", {"x": 1}), Store().fetch)
    r = n.deploy(_recipe("1.0.1", {"x": 1}), Store().fetch, {"merge": '{"x": -1}'}, policy=policy)
    assert (r.status, n.version, n.state) == (status, version, state)
    assert [line for line in n.log if "1.0.1" in line][:4] == [
        "1.0.1 ERRORED (1): x must be >= 0", "1.0.1 ERRORED (2): x must be >= 0", "1.0.1 ERRORED (3): x must be >= 0",
        "1.0.1 BROKEN"]
    if policy == "ROLLBACK":
        assert n.configuration == {"x": 1} and n.log[-1] == "1.0.0 RUNNING"
