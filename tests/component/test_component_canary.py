"""Quality canary (issue 15.1) in the component, on the real models and the wire-level nucleus
stand-in: a swap to a model out of tolerance is refused (the old one keeps serving, an error
event carries the figure); a new component version whose recognizer sidecar has the WRONG
normalization errors at start, goes BROKEN and is rolled back by the deployment simulator
(tests/greengrass/deployment.py), with the failing figure in the events."""

from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema
import pytest

from canary_models import DET, FP32, canary_models
from facefleet.cloud.publish import add_probe_artifacts
from facefleet.errors import FacefleetError
from facefleet.events import parse_event
from greengrass.deployment import Nucleus as Deployments
from greengrass.deployment import ProcessError, Started
from greengrass.nucleus import COMPONENT

from .helpers import base_config, wait_until

ROOT = Path(__file__).resolve().parents[2]
FIGURE = re.compile(r"quality canary: recognizer \S+ \(\w+\): probe cosine to the float model min (-?[0-9.]+) < tolerance 0\.9000")


@pytest.fixture(scope="module")
def canary_dir(tmp_path_factory, assets) -> Path:
    return canary_models(tmp_path_factory.mktemp("canary-models"), assets)


def _drained_events(comp, ipc, kind):
    comp.forwarder.drain(10)
    return ipc.events(kind)


def test_swap_to_a_wrong_normalization_is_refused_and_the_old_model_keeps_serving(greengrass, assets, canary_dir):
    cfg = base_config(assets)
    comp, ipc = greengrass(cfg, artifacts=canary_dir)
    try:
        serving = comp.models.recognizer
        figures = comp.status({}).canary
        assert figures["recognizer"]["passed"] and figures["recognizer"]["cos_min"] >= figures["recognizer"]["min_cosine"]
        assert figures["detector"]["passed"] and figures["detector"]["faces_served"] == figures["detector"]["faces_float"]
        wrong = dict(cfg, models=dict(cfg["models"], recognizer=f"wrong/{FP32}"))
        report = ipc.push_validation(wrong)          # a configuration-only deployment: REJECTED with the figure
        assert report.status == "REJECTED" and FIGURE.search(report.message), report.message
        ipc.set_configuration(wrong)                 # the swap itself (a deployment that skipped validation)
        assert wait_until(lambda: _drained_events(comp, ipc, "error"), 60)
        err = ipc.events("error")[-1]
        assert err["source"] == "model" and err["message"].startswith("model swap failed, keeping the serving models: ")
        assert float(FIGURE.search(err["message"])[1]) < 0.9
        assert comp.models.recognizer is serving and comp.paths.recognizer == canary_dir / FP32
        assert not ipc.events("model_changed")
        comp.publish(comp.status({}))
        assert wait_until(lambda: _drained_events(comp, ipc, "status"), 30)
        status = ipc.events("status")[-1]
        assert status["canary"]["recognizer"]["passed"] is True
        jsonschema.Draft202012Validator(json.loads((ROOT / "schemas" / "event.schema.json").read_text())).validate(status)
        assert parse_event(status).canary == status["canary"]
    finally:
        comp.stop()


def test_a_version_with_a_wrong_normalization_is_rolled_back_with_the_failing_figure(tmp_path, greengrass, assets,
                                                                                      canary_dir):
    # the same ONNX files and probe sets in both versions; 1.0.1 adds a recognizer sidecar with mean 0 / std 1
    shipped = {"1.0.0": {DET: canary_dir / DET, FP32: canary_dir / FP32},
               "1.0.1": {DET: canary_dir / DET, FP32: canary_dir / "wrong" / FP32,
                         "w600k_mbf_fp32.json": canary_dir / "wrong" / "w600k_mbf_fp32.json"}}
    recipes = {}
    for version, files in shipped.items():
        cfg = base_config(assets)
        cfg["models"]["recognizer"] = FP32
        recipe = {"RecipeFormatVersion": "2020-01-25", "ComponentName": COMPONENT, "ComponentVersion": version,
                  "ComponentConfiguration": {"DefaultConfiguration": cfg},
                  "Manifests": [{"Platform": {"os": "linux"}, "Lifecycle": {},
                                 "Artifacts": [{"URI": f"s3://BUCKET_NAME/{COMPONENT}/{version}/{n}"} for n in files]}]}
        probes = [p for p in files.values() if p.suffix == ".onnx"]
        add_probe_artifacts(recipe, [*map(Path, files), *(p.with_name(p.stem + ".probes.npz") for p in probes)])
        for p in probes:  # publish ships the build's probe set beside each model
            files[p.stem + ".probes.npz"] = p.with_name(p.stem + ".probes.npz")
        recipes[version] = recipe
    wires, running = [], []

    def start(s: Started) -> None:
        """The component's Run: the real Component on its own wire-level nucleus stand-in."""
        while running:  # the nucleus stops the old process before it runs the new version
            running.pop().stop()
        comp, ipc = greengrass(s.configuration, start=False, artifacts=s.artifacts, work=s.work)
        wires.append((comp, ipc))
        try:
            comp.start()
        except FacefleetError as e:
            raise ProcessError(str(e)) from None
        running.append(comp)

    n = Deployments(tmp_path / "greengrass", COMPONENT, start)
    fetch = lambda version: lambda uri: shipped[version][uri.rsplit("/", 1)[-1]].read_bytes()  # noqa: E731
    try:
        assert n.deploy(recipes["1.0.0"], fetch("1.0.0")).status == "SUCCESSFUL", n.log
        assert "w600k_mbf_fp32.probes.npz" in {p.name for p in n.artifacts_path("1.0.0").iterdir()}
        bad = n.deploy(recipes["1.0.1"], fetch("1.0.1"))
        assert bad.status == "FAILED_ROLLBACK_COMPLETE", n.log
        assert [line for line in n.log if "BROKEN" in line] == ["1.0.1 BROKEN"]
        errored = [line for line in n.log if line.startswith("1.0.1 ERRORED")]
        assert len(errored) == 3 and all(FIGURE.search(line) for line in errored)
        assert (n.version, n.state) == ("1.0.0", "RUNNING")
        comp = running[-1]
        assert comp.models.recognizer.spec.normalization.mean == (127.5, 127.5, 127.5)  # 1.0.0's spec serves again
        # the failing figure reached the cloud as error events (spooled in the work folder, sent by 1.0.0)
        assert wait_until(lambda: len([e for _, w in wires for e in _drained_events(comp, w, "error")
                                       if e["source"] == "start"]) >= 3, 60)
        errors = [e for _, w in wires for e in w.events("error") if e["source"] == "start"]
        assert len({e["event_id"] for e in errors}) == len(errors)
        assert all(float(FIGURE.search(e["message"])[1]) < 0.9 for e in errors)
        comp.publish(comp.status({}))
        assert wait_until(lambda: _drained_events(comp, wires[-1][1], "status"), 30)
        assert wires[-1][1].events("status")[-1]["canary"]["recognizer"]["passed"] is True
    finally:
        for c in running:
            c.stop()
