"""facefleet deploy: revise the latest deployment, carry the policies and the configuration, watch the job.

greengrassv2 and the IoT job are botocore Stubbers: every response is checked against botocore
1.44.8's service models (botocore/data/greengrassv2/2020-11-30 and iot/2015-05-28
service-2.json: Job, JobProcessDetails, JobExecutionSummaryForJob, EffectiveDeployment,
GetDeploymentResponse), and shaped like the real service's: a thing-group deployment is a
CONTINUOUS job (AWS IoT API reference, Job/JobSummary targetSelection: a continuous job "will
continue to run" and runs on things added to the group later; AssociateTargetsWithJob requires
it IN_PROGRESS), so it stays IN_PROGRESS and is judged per device execution (JobExecutionStatus).
"""

import json
import subprocess
import sys
from argparse import Namespace
from datetime import UTC, datetime

import boto3
import pytest
from botocore.stub import ANY, Stubber

from facefleet.cloud.deploy import RolloutPolicy, parse_set, prepare, watch
from facefleet.cloud.fleet_cli import cmd_deploy
from facefleet.errors import FacefleetError

COMPONENT = "com.facefleet.FaceRecognition"
NOW = datetime(2026, 11, 22, tzinfo=UTC)
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


DEFAULTS = {"models": {"backend": "onnx", "detector": "det_500m.onnx", "recognizer": "w600k_mbf_fp32.onnx"},
            "cameras": [{"id": "cam0", "source": "0"}], "gallery_archives": []}


def _stub_prepare(stub, group_arn, account, version, latest=True, ours=None, state="DEPLOYABLE", defaults=DEFAULTS):
    arn = _component_arn(account, version)
    stub.add_response("describe_component", {"arn": arn, "componentName": COMPONENT, "componentVersion": version,
                                             "status": {"componentState": state}}, {"arn": arn})
    if state != "DEPLOYABLE":
        return
    if latest:
        stub.add_response("list_deployments", {"deployments": [{"deploymentId": "d-old", "targetArn": group_arn}]},
                          {"targetArn": group_arn, "historyFilter": "LATEST_ONLY"})
        stub.add_response("get_deployment", {"deploymentId": "d-old", "targetArn": group_arn, "deploymentStatus": "ACTIVE",
                                             "components": {**OTHER, COMPONENT: ours or {"componentVersion": "1.0.0"}}},
                          {"deploymentId": "d-old"})
    else:
        stub.add_response("list_deployments", {"deployments": []}, {"targetArn": group_arn, "historyFilter": "LATEST_ONLY"})
    recipe = {"ComponentName": COMPONENT, "ComponentVersion": version,
              "ComponentConfiguration": {"DefaultConfiguration": defaults}}
    stub.add_response("get_component", {"recipeOutputFormat": "JSON", "recipe": json.dumps(recipe).encode()},
                      {"arn": arn, "recipeOutputFormat": "JSON"})


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
    assert ours["configurationUpdate"]["reset"] == ["/recognition/match_threshold", "/gallery_archives"]
    job = req["iotJobConfiguration"]
    rate = job["jobExecutionsRolloutConfig"]
    assert rate["exponentialRate"]["baseRatePerMinute"] == 3 and rate["maximumPerMinute"] == 20
    assert [c["failureType"] for c in job["abortConfig"]["criteriaList"]] == ["FAILED", "REJECTED", "TIMED_OUT"]
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
    assert list(req["components"]) == [COMPONENT]
    assert req["components"][COMPONENT]["configurationUpdate"] == {"reset": ["/gallery_archives"]}
    with pytest.raises(FacefleetError, match="unknown thing group 'attic'"):
        prepare(gg, iot, sts, region="eu-west-1", component=COMPONENT, version="1.0.0", thing_group="attic",
                merge={}, reset=[], policy=RolloutPolicy())
    stub.add_client_error("describe_component", "ResourceNotFoundException", "not found", 404)
    with stub, pytest.raises(FacefleetError, match=r"version 9\.9\.9 does not exist"):
        prepare(gg, iot, sts, region="eu-west-1", component=COMPONENT, version="9.9.9", thing_group="lobby-cams",
                merge={}, reset=[], policy=RolloutPolicy())


def test_revision_carries_the_effective_configuration(mocked_aws, caplog):
    """Item 7: a revision without --set keeps the earlier merge (a device that joins later gets only
    the revision); --set adds to it, --reset removes from it."""
    iot, sts, group_arn, account = _setup(mocked_aws)
    gg, stub = _gg(mocked_aws)
    earlier = {"componentVersion": "1.0.6", "configurationUpdate": {
        "merge": json.dumps({"models": {"backend": "hailo"}, "HAILO_REC_HEF": "w600k_mbf.hef", "status_interval_s": 30}),
        "reset": ["/spool/batch"]}}
    _stub_prepare(stub, group_arn, account, "1.0.6", ours=earlier)
    with stub:
        req = prepare(gg, iot, sts, region="eu-west-1", component=COMPONENT, version="1.0.6", thing_group="lobby-cams",
                      merge={"detection": {"min_face_px": 16}}, reset=["/status_interval_s"], policy=RolloutPolicy())
    update = req["components"][COMPONENT]["configurationUpdate"]
    assert json.loads(update["merge"]) == {"models": {"backend": "hailo"}, "HAILO_REC_HEF": "w600k_mbf.hef",
                                           "detection": {"min_face_px": 16}}
    assert update["reset"] == ["/spool/batch", "/status_interval_s", "/gallery_archives"]
    assert "does not ask the running component to validate" not in caplog.text  # same version: validated


def test_version_change_with_configuration_warns_and_invalid_configuration_is_refused(mocked_aws, caplog):
    """Item 5: the nucleus skips validation when the version changes
    (aws-greengrass-nucleus v2.18.2 DynamicComponentConfigurationValidator.java:90-126)."""
    iot, sts, group_arn, account = _setup(mocked_aws)
    gg, stub = _gg(mocked_aws)
    _stub_prepare(stub, group_arn, account, "1.0.7")
    with stub:
        prepare(gg, iot, sts, region="eu-west-1", component=COMPONENT, version="1.0.7", thing_group="lobby-cams",
                merge={"status_interval_s": 30}, reset=[], policy=RolloutPolicy())
    assert "goes from 1.0.0 to 1.0.7: the nucleus does not ask the running component to validate" in caplog.text
    _stub_prepare(stub, group_arn, account, "1.0.7")
    with stub, pytest.raises(FacefleetError, match=r"refusing to deploy: .*cameras"):
        prepare(gg, iot, sts, region="eu-west-1", component=COMPONENT, version="1.0.7", thing_group="lobby-cams",
                merge={"cameras": [{"id": "door", "source": "ftp://nope"}]}, reset=[], policy=RolloutPolicy())


@pytest.mark.parametrize("state", ["FAILED", "INITIATED", "REQUESTED"])
def test_a_version_that_is_not_deployable_is_refused(mocked_aws, state):
    iot, sts, group_arn, account = _setup(mocked_aws)
    gg, stub = _gg(mocked_aws)
    _stub_prepare(stub, group_arn, account, "1.0.7", state=state)
    with stub, pytest.raises(FacefleetError, match=f"1.0.7 is {state}, not DEPLOYABLE"):
        prepare(gg, iot, sts, region="eu-west-1", component=COMPONENT, version="1.0.7", thing_group="lobby-cams",
                merge={}, reset=[], policy=RolloutPolicy())


# ---- watch: a continuous job, shaped like the real service's responses --------------------------------
ACCOUNT = "123456789012"
JOB_ARN = f"arn:aws:iot:eu-west-1:{ACCOUNT}:job/j-1"


def _clients(session):
    iot, gg = session.client("iot"), session.client("greengrassv2")
    return iot, Stubber(iot), gg, Stubber(gg)


def _poll(iot_stub, gg_stub, things: dict[str, str | None], job_status="IN_PROGRESS", dep_status="ACTIVE", reason=None):
    """One watch poll: DescribeJob (continuous, still IN_PROGRESS), GetDeployment, the group's
    members, the executions (None: the rollout has not reached that device yet)."""
    counts = {s: 0 for s in ("Queued", "InProgress", "Succeeded", "Failed", "Rejected", "TimedOut", "Canceled", "Removed")}
    names = {"QUEUED": "Queued", "IN_PROGRESS": "InProgress", "SUCCEEDED": "Succeeded", "FAILED": "Failed",
             "REJECTED": "Rejected", "TIMED_OUT": "TimedOut", "CANCELED": "Canceled", "REMOVED": "Removed"}
    for st in things.values():
        if st:
            counts[names[st]] += 1
    job = {"jobArn": JOB_ARN, "jobId": "j-1", "targetSelection": "CONTINUOUS", "status": job_status,
           "targets": [f"arn:aws:iot:eu-west-1:{ACCOUNT}:thinggroup/lobby-cams"], "createdAt": NOW,
           "lastUpdatedAt": NOW, "isConcurrent": False,
           "jobProcessDetails": {f"numberOf{k}Things": v for k, v in counts.items()}}
    if reason:
        job.update(reasonCode=reason, comment="abort criteria met")
    iot_stub.add_response("describe_job", {"job": job}, {"jobId": "j-1"})
    gg_stub.add_response("get_deployment", {"deploymentId": "d-1", "iotJobId": "j-1", "deploymentStatus": dep_status,
                                            "isLatestForTarget": dep_status == "ACTIVE"}, {"deploymentId": "d-1"})
    iot_stub.add_response("list_things_in_thing_group", {"things": sorted(things)},
                          {"thingGroupName": "lobby-cams", "recursive": True})
    iot_stub.add_response("list_job_executions_for_job", {"executionSummaries": [
        {"thingArn": f"arn:aws:iot:eu-west-1:{ACCOUNT}:thing/{t}",
         "jobExecutionSummary": {"status": st, "queuedAt": NOW, "lastUpdatedAt": NOW, "executionNumber": 1}}
        for t, st in sorted(things.items()) if st]}, {"jobId": "j-1"})


def _watch(iot, gg, lines, max_polls=10):
    return watch(iot, "j-1", lines.append, interval_s=0, sleep=lambda s: None, max_polls=max_polls, gg=gg,
                 deployment_id="d-1", thing_group="lobby-cams")


def test_watch_succeeds_when_every_device_succeeded_though_the_job_stays_in_progress(aws_env):
    """Item 2: the job never leaves IN_PROGRESS; success is every targeted device SUCCEEDED."""
    iot, iot_stub, gg, gg_stub = _clients(boto3.session.Session(region_name="eu-west-1"))
    _poll(iot_stub, gg_stub, {"pi-1": "QUEUED", "pi-2": None, "pi-3": None})
    _poll(iot_stub, gg_stub, {"pi-1": "SUCCEEDED", "pi-2": "IN_PROGRESS", "pi-3": "QUEUED"})
    _poll(iot_stub, gg_stub, {"pi-1": "SUCCEEDED", "pi-2": "SUCCEEDED", "pi-3": "SUCCEEDED"})
    lines: list[str] = []
    with iot_stub, gg_stub:
        assert _watch(iot, gg, lines) is True
        iot_stub.assert_no_pending_responses()
    assert lines[0] == "job j-1: IN_PROGRESS, deployment ACTIVE: not_started 2 queued 1"
    assert lines[-1] == "job j-1: IN_PROGRESS, deployment ACTIVE: succeeded 3"


def test_watch_fails_when_every_device_finished_and_one_failed_below_the_abort_threshold(aws_env):
    iot, iot_stub, gg, gg_stub = _clients(boto3.session.Session(region_name="eu-west-1"))
    _poll(iot_stub, gg_stub, {"pi-1": "SUCCEEDED", "pi-2": "FAILED"})
    gg_stub.add_response("list_effective_deployments", {"effectiveDeployments": [{
        "deploymentId": "d-1", "deploymentName": "ff", "targetArn": f"arn:aws:iot:eu-west-1:{ACCOUNT}:thinggroup/lobby-cams",
        "coreDeviceExecutionStatus": "FAILED", "reason": "FAILED_ROLLBACK_COMPLETE: com.facefleet.FaceRecognition is BROKEN",
        "creationTimestamp": NOW, "modifiedTimestamp": NOW,
        "statusDetails": {"errorStack": ["DEPLOYMENT_FAILURE", "COMPONENT_UPDATE_ERROR", "COMPONENT_BROKEN"],
                          "errorTypes": ["COMPONENT_ERROR"]}}]}, {"coreDeviceThingName": "pi-2"})
    lines: list[str] = []
    with iot_stub, gg_stub:
        assert _watch(iot, gg, lines) is False
    assert lines[-1] == ("  pi-2: FAILED: FAILED_ROLLBACK_COMPLETE: com.facefleet.FaceRecognition is BROKEN "
                         "[COMPONENT_ERROR]")


@pytest.mark.parametrize(("job_status", "dep_status", "reason", "needle"), [
    ("CANCELED", "ACTIVE", "FAILURE_THRESHOLD", "job j-1 was canceled: FAILURE_THRESHOLD"),  # abort criteria met
    ("IN_PROGRESS", "INACTIVE", None, "deployment d-1 is INACTIVE (a newer deployment replaced it)"),
    ("IN_PROGRESS", "CANCELED", None, "deployment d-1 is CANCELED"),
])
def test_watch_fails_on_a_cancelled_job_or_deployment(aws_env, job_status, dep_status, reason, needle):
    iot, iot_stub, gg, gg_stub = _clients(boto3.session.Session(region_name="eu-west-1"))
    _poll(iot_stub, gg_stub, {"pi-1": "SUCCEEDED", "pi-2": "IN_PROGRESS"}, job_status=job_status, dep_status=dep_status,
          reason=reason)
    lines: list[str] = []
    with iot_stub, gg_stub:
        assert _watch(iot, gg, lines) is False
    assert needle in lines


def test_watch_gives_up_politely(aws_env):
    iot, iot_stub, gg, gg_stub = _clients(boto3.session.Session(region_name="eu-west-1"))
    for _ in range(3):
        _poll(iot_stub, gg_stub, {"pi-1": "IN_PROGRESS"})
    lines: list[str] = []
    with iot_stub, gg_stub:
        assert _watch(iot, gg, lines, max_polls=3) is False
    assert lines[-1] == "job j-1 still IN_PROGRESS after 3 polls"


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
    _iot, _sts, group_arn, account = _setup(mocked_aws)
    gg, stub = _gg(mocked_aws)
    _stub_prepare(stub, group_arn, account, "1.0.7")
    stub.add_response("create_deployment", {"deploymentId": "d-1", "iotJobId": "j-1"},
                      {"targetArn": group_arn, "deploymentName": ANY, "components": ANY, "deploymentPolicies": ANY,
                       "iotJobConfiguration": ANY})
    iot = mocked_aws.client("iot")  # moto for the thing group; the job itself is stubbed below
    job_iot = boto3.session.Session(region_name="eu-west-1").client("iot")
    job_stub = Stubber(job_iot)
    _poll(job_stub, stub, {"pi-1": "FAILED"}, job_status="CANCELED", reason="FAILURE_THRESHOLD")
    stub.add_response("list_effective_deployments", {"effectiveDeployments": []}, {"coreDeviceThingName": "pi-1"})

    class Iot:  # describe_thing_group from moto, the job's calls from the stub
        def __getattr__(self, name):
            return getattr(iot if name == "describe_thing_group" else job_iot, name)

    monkeypatch.setattr("facefleet.cloud.aws.client",
                        lambda s, r=None, sess=None: {"greengrassv2": gg, "iot": Iot()}.get(s) or mocked_aws.client(s))
    with stub, job_stub, pytest.raises(FacefleetError, match="failed or was cancelled on some devices"):
        cmd_deploy(_args(watch=True, session=None))
    out = capsys.readouterr().out
    assert "was canceled: FAILURE_THRESHOLD" in out and "pi-1: no effective deployment reported" in out


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
