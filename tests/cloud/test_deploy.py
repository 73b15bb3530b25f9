"""facefleet deploy: revise the latest deployment, carry the policies, watch the job."""

import json
import subprocess
import sys
from argparse import Namespace

import pytest
from botocore.stub import ANY, Stubber

from facefleet.cloud.deploy import RolloutPolicy, parse_set, prepare, watch
from facefleet.cloud.fleet_cli import cmd_deploy
from facefleet.errors import FacefleetError

COMPONENT = "com.facefleet.FaceRecognition"
OTHER = {"aws.greengrass.Nucleus": {"componentVersion": "2.12.0"},
         "com.example.Logger": {"componentVersion": "1.2.3", "configurationUpdate": {"merge": "{\"level\": \"INFO\"}"}}}


def _setup(session):
    iot, sts = session.client("iot"), session.client("sts")
    group_arn = iot.create_thing_group(thingGroupName="lobby-cams")["thingGroupArn"]
    account = sts.get_caller_identity()["Account"]
    return iot, sts, group_arn, account


def _gg(session):
    gg = session.client("greengrassv2")
    return gg, Stubber(gg)


def _component_arn(account, version):
    return f"arn:aws:greengrass:eu-west-1:{account}:components:{COMPONENT}:versions:{version}"


def _stub_prepare(stub, group_arn, account, version, latest=True):
    stub.add_response("describe_component", {"arn": _component_arn(account, version), "componentName": COMPONENT,
                                             "componentVersion": version}, {"arn": _component_arn(account, version)})
    if latest:
        stub.add_response("list_deployments", {"deployments": [{"deploymentId": "d-old", "targetArn": group_arn}]},
                          {"targetArn": group_arn, "historyFilter": "LATEST_ONLY"})
        stub.add_response("get_deployment", {"deploymentId": "d-old", "targetArn": group_arn,
                                             "components": {**OTHER, COMPONENT: {"componentVersion": "1.0.0"}}},
                          {"deploymentId": "d-old"})
    else:
        stub.add_response("list_deployments", {"deployments": []}, {"targetArn": group_arn, "historyFilter": "LATEST_ONLY"})


def test_parse_set():
    assert parse_set(["HAILO_REC_HEF=models/r.hef", "detection/plan/grid=true", "fps=12.5", 'cams=[{"id":"a"}]']) == {
        "HAILO_REC_HEF": "models/r.hef", "detection": {"plan": {"grid": True}}, "fps": 12.5, "cams": [{"id": "a"}]}
    for bad in ["novalue", "=x", "a//b=1", " =2"]:
        with pytest.raises(FacefleetError, match="malformed --set"):
            parse_set([bad])
    with pytest.raises(FacefleetError, match="used as a folder"):
        parse_set(["a=1", "a/b=2"])


def test_revision_keeps_other_components_and_carries_policies(mocked_aws):
    iot, sts, group_arn, account = _setup(mocked_aws)
    gg, stub = _gg(mocked_aws)
    _stub_prepare(stub, group_arn, account, "1.0.7")
    policy = RolloutPolicy(base_rate_per_minute=3, increment_factor=1.5, maximum_per_minute=20,
                           abort_failure_percent=15, abort_min_executed=4, timeout_minutes=30)
    with stub:
        req = prepare(gg, iot, sts, region="eu-west-1", component=COMPONENT, version="1.0.7", thing_group="lobby-cams",
                      merge={"HAILO_REC_HEF": "models/arcface_r50.hef"}, reset=["/recognition/match_threshold"], policy=policy)
        stub.assert_no_pending_responses()
    assert req["targetArn"] == group_arn
    assert req["components"]["aws.greengrass.Nucleus"] == OTHER["aws.greengrass.Nucleus"]
    assert req["components"]["com.example.Logger"] == OTHER["com.example.Logger"]  # untouched, config included
    ours = req["components"][COMPONENT]
    assert ours["componentVersion"] == "1.0.7"
    assert json.loads(ours["configurationUpdate"]["merge"]) == {"HAILO_REC_HEF": "models/arcface_r50.hef"}
    assert ours["configurationUpdate"]["reset"] == ["/recognition/match_threshold"]
    job = req["iotJobConfiguration"]
    rate = job["jobExecutionsRolloutConfig"]
    assert rate["exponentialRate"]["baseRatePerMinute"] == 3 and rate["maximumPerMinute"] == 20
    assert job["abortConfig"]["criteriaList"][0] == {"failureType": "FAILED", "action": "CANCEL",
                                                     "thresholdPercentage": 15, "minNumberOfExecutedThings": 4}
    assert job["timeoutConfig"]["inProgressTimeoutInMinutes"] == 30
    pol = req["deploymentPolicies"]
    assert pol["failureHandlingPolicy"] == "ROLLBACK" and pol["componentUpdatePolicy"]["action"] == "NOTIFY_COMPONENTS"
    # the request is valid for the real API: the Stubber checks it against botocore's model
    with stub:
        stub.add_response("create_deployment", {"deploymentId": "d-new", "iotJobId": "j-1"}, req)
        assert gg.create_deployment(**req)["deploymentId"] == "d-new"


def test_first_deployment_and_unknowns(mocked_aws):
    iot, sts, group_arn, account = _setup(mocked_aws)
    gg, stub = _gg(mocked_aws)
    _stub_prepare(stub, group_arn, account, "1.0.0", latest=False)
    with stub:
        req = prepare(gg, iot, sts, region="eu-west-1", component=COMPONENT, version="1.0.0", thing_group="lobby-cams",
                      merge={}, reset=[], policy=RolloutPolicy())
    assert list(req["components"]) == [COMPONENT] and "configurationUpdate" not in req["components"][COMPONENT]
    with pytest.raises(FacefleetError, match="unknown thing group 'attic'"):
        prepare(gg, iot, sts, region="eu-west-1", component=COMPONENT, version="1.0.0", thing_group="attic",
                merge={}, reset=[], policy=RolloutPolicy())
    stub.add_client_error("describe_component", "ResourceNotFoundException", "not found", 404)
    with stub, pytest.raises(FacefleetError, match=r"version 9\.9\.9 does not exist"):
        prepare(gg, iot, sts, region="eu-west-1", component=COMPONENT, version="9.9.9", thing_group="lobby-cams",
                merge={}, reset=[], policy=RolloutPolicy())


def _job(iot, group_arn, job_id):
    iot.create_job(jobId=job_id, targets=[group_arn], document="{}")


def test_watch_reports_progress_and_fails_on_abort(mocked_aws):
    iot, _, group_arn, _ = _setup(mocked_aws)
    _job(iot, group_arn, "job-ok")
    lines: list[str] = []
    seen = []

    def sleep(_s):  # the job advances while we wait
        seen.append(1)
        if len(seen) == 2:
            iot.cancel_job(jobId="job-ok", reasonCode="FAILURE_THRESHOLD", comment="abort criteria met")

    assert watch(iot, "job-ok", lines.append, interval_s=0, sleep=sleep, max_polls=10) is False
    assert lines[0] == "job job-ok: QUEUED queued 1"  # moto's job starts queued for the group's devices
    assert "canceled: FAILURE_THRESHOLD" in lines[-1] and len(seen) == 2


def test_watch_times_out_politely(mocked_aws):
    iot, _, group_arn, _ = _setup(mocked_aws)
    _job(iot, group_arn, "job-slow")
    lines: list[str] = []
    assert watch(iot, "job-slow", lines.append, interval_s=0, sleep=lambda s: None, max_polls=3) is False
    assert lines[-1] == "job job-slow still QUEUED after 3 polls"


def _args(**kw):
    base = dict(thing_group="lobby-cams", version="1.0.7", set=["HAILO_REC_HEF=models/r.hef"], reset=None,
                component=COMPONENT, gdk_config="gdk-config.json", region="eu-west-1", rate=2, increment=2.0,
                max_per_minute=50, abort_percent=10.0, abort_min=5, timeout_minutes=60, no_rollback=False,
                dry_run=False, watch=False, poll_s=0)
    base.update(kw)
    return Namespace(**base)


def test_cli_dry_run_prints_the_request_and_changes_nothing(mocked_aws, capsys, monkeypatch):
    _iot, _sts, group_arn, account = _setup(mocked_aws)
    gg, stub = _gg(mocked_aws)
    _stub_prepare(stub, group_arn, account, "1.0.7")
    monkeypatch.setattr("facefleet.cloud.aws.client", lambda s, r=None, sess=None: {"greengrassv2": gg}.get(s) or mocked_aws.client(s))
    with stub:
        assert cmd_deploy(_args(dry_run=True, session=None)) == 0
        stub.assert_no_pending_responses()  # no create_deployment was made
    req = json.loads(capsys.readouterr().out)
    assert req["components"][COMPONENT]["componentVersion"] == "1.0.7"


def test_cli_watch_exits_non_zero_on_abort(mocked_aws, monkeypatch, capsys):
    iot, _sts, group_arn, account = _setup(mocked_aws)
    _job(iot, group_arn, "job-7")
    iot.cancel_job(jobId="job-7", reasonCode="FAILURE_THRESHOLD")
    gg, stub = _gg(mocked_aws)
    _stub_prepare(stub, group_arn, account, "1.0.7")
    stub.add_response("create_deployment", {"deploymentId": "d-7", "iotJobId": "job-7"},
                      {"targetArn": group_arn, "deploymentName": ANY, "components": ANY, "deploymentPolicies": ANY,
                       "iotJobConfiguration": ANY})
    monkeypatch.setattr("facefleet.cloud.aws.client", lambda s, r=None, sess=None: {"greengrassv2": gg}.get(s) or mocked_aws.client(s))
    with stub, pytest.raises(FacefleetError, match="did not complete cleanly"):
        cmd_deploy(_args(watch=True, session=None))
    assert "was canceled" in capsys.readouterr().out


@pytest.mark.parametrize(("argv", "needle"), [
    (["--set", "oops"], "malformed --set"),
    (["--rate", "0"], "invalid rollout policy"),
    ([], "AWS credentials not found"),
])
def test_cli_bad_input(no_credentials_env, argv, needle):
    r = subprocess.run([sys.executable, "-m", "facefleet", "deploy", "--thing-group", "g", "--version", "1.0.0",
                        "--component", COMPONENT, *argv], capture_output=True, text=True, env=no_credentials_env, timeout=60)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert needle in r.stderr.strip().splitlines()[-1]
