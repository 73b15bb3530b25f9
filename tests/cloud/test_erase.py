"""``facefleet gallery erase`` (issue 15 part 3, operator side): a continuous IoT job on the thing
group, the erase list in the publish bucket, the confirmation report, and publish shipping no
archive with an erased name.

IoT is a botocore Stubber: it checks every request and response against botocore's own ``iot``
service model (botocore/data/iot/2015-05-28/service-2.json: CreateJob targetSelection
CONTINUOUS, ListJobExecutionsForJob executionSummaries[].jobExecutionSummary.status,
DescribeJobExecution execution.statusDetails.detailsMap). S3 and STS are moto (faithful for
get/put object and NoSuchKey/NoSuchBucket)."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime

import pytest
from botocore.stub import ANY, Stubber

from facefleet.cli import main
from facefleet.cloud.erase import ERASED_KEY, read_erased

from .test_publish import COMPONENT, REGION, _capture, _expect_create, _gg, _run, gdk_build, model_dir

ACCOUNT = "123456789012"
GROUP = "door-cams"
GROUP_ARN = f"arn:aws:iot:{REGION}:{ACCOUNT}:thinggroup/{GROUP}"
T0 = datetime(2026, 12, 1, tzinfo=UTC)


@pytest.fixture
def built(tmp_path, assets):
    """The real GDK build output (as test_publish's build_dir)."""
    wheel = tmp_path / "facefleet.whl"
    wheel.write_bytes(b"PK wheel stand-in" * 100)
    return gdk_build(tmp_path / "greengrass-build", model_dir(tmp_path, assets), wheel)


class _Session:
    """moto's session, with the stubbed IoT client handed out for 'iot'."""

    def __init__(self, session, iot):
        self.session, self.iot, self.region_name = session, iot, session.region_name

    def client(self, service, region_name=None):
        return self.iot if service == "iot" else self.session.client(service, region_name=region_name)


def _summary(thing: str, status: str, n: int = 1) -> dict:
    return {"thingArn": f"arn:aws:iot:{REGION}:{ACCOUNT}:thing/{thing}",
            "jobExecutionSummary": {"status": status, "queuedAt": T0, "lastUpdatedAt": T0, "executionNumber": n}}


def _report_round(stub, job_id, executions: list[dict]):
    stub.add_response("list_things_in_thing_group", {"things": ["cam-1", "cam-2", "cam-3"]},
                      {"thingGroupName": GROUP, "recursive": True})
    stub.add_response("list_job_executions_for_job", {"executionSummaries": executions}, {"jobId": job_id})


def test_erase_makes_a_continuous_job_records_the_name_and_reports_who_confirmed(mocked_aws, capsys):
    iot = mocked_aws.client("iot")
    stub = Stubber(iot)
    documents: list = []
    iot.meta.events.register("provide-client-params.iot.CreateJob", lambda params, **kw: documents.append(params))
    stub.add_response("describe_thing_group", {"thingGroupName": GROUP, "thingGroupArn": GROUP_ARN},
                      {"thingGroupName": GROUP})
    stub.add_response("create_job", {"jobArn": f"arn:aws:iot:{REGION}:{ACCOUNT}:job/x", "jobId": "x"},
                      {"jobId": ANY, "targets": [GROUP_ARN], "targetSelection": "CONTINUOUS", "document": ANY,
                       "description": ANY})
    # round 1: cam-1 confirmed, cam-2 queued (offline), cam-3 has no execution yet
    _report_round(stub, ANY, [_summary("cam-1", "SUCCEEDED"), _summary("cam-2", "QUEUED")])
    # round 2: cam-2 came back and confirmed; cam-3 failed, with its reason
    _report_round(stub, ANY, [_summary("cam-1", "SUCCEEDED"), _summary("cam-2", "SUCCEEDED"), _summary("cam-3", "FAILED")])
    stub.add_response("describe_job_execution", {"execution": {"jobId": "x", "status": "FAILED", "statusDetails": {
        "detailsMap": {"message": "erased-names list is full"}}}}, {"jobId": ANY, "thingName": "cam-3"})
    session = _Session(mocked_aws, iot)
    mocked_aws.client("s3").create_bucket(Bucket=f"ff-components-{REGION}-{ACCOUNT}",
                                          CreateBucketConfiguration={"LocationConstraint": REGION})
    argv = ["gallery", "erase", "obama", "--thing-group", GROUP, "--bucket", "ff-components", "--region", REGION,
            "--watch", "--poll-s", "1", "--gdk-config", "/nonexistent/gdk-config.json"]
    import facefleet.cloud.erase as erase_mod

    orig = erase_mod.register

    def register(sub):  # the CLI's own parser, with the test's session and no waiting
        orig(sub)
        gsub = next(a for a in sub.choices["gallery"]._actions if a.__class__.__name__ == "_SubParsersAction")
        gsub.choices["erase"].set_defaults(session=session, sleep=lambda s: None)

    with stub, pytest.MonkeyPatch.context() as mp:
        mp.setattr(erase_mod, "register", register)
        code = main(argv)
        stub.assert_no_pending_responses()
    out = capsys.readouterr().out
    assert code == 1  # one device failed
    job = documents[0]
    assert json.loads(job["document"]) == {"command": "erase", "name": "obama"}
    assert job["jobId"].startswith("facefleet-erase-") and "obama" not in job["jobId"] and len(job["jobId"]) <= 64
    assert "confirmed 2, pending 0, failed 1" in out and "confirmed: cam-1, cam-2" in out
    assert "failed: cam-3 (FAILED: erased-names list is full)" in out
    assert read_erased(mocked_aws.client("s3"), f"ff-components-{REGION}-{ACCOUNT}") == {"obama"}


def test_publish_ships_no_archive_with_an_erased_name(mocked_aws, built, tmp_path, assets, load_detector):
    """A version carried 'people.tar.gz' (obama, miranda); obama was erased since: the next
    version ships the archive rewritten (a new content-addressed object) with miranda only, and
    a new archive holding obama is shipped without him too."""
    from facefleet.archives import read_gallery_archive
    from facefleet.recognition.gallery import Gallery
    from facefleet.recognition.loader import enroll_images

    s3 = mocked_aws.client("s3")
    bucket = f"ff-components-{REGION}-{ACCOUNT}"
    s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": REGION})
    g = Gallery.open(tmp_path / "g", create=True)
    enroll_images(g, load_detector(), "obama", [assets / "enroll" / "obama.jpg"])
    enroll_images(g, load_detector(), "miranda", [assets / "enroll" / "lin-manuel-miranda.png"])
    people = tmp_path / "people.tar.gz"
    g.export_archive(people)
    old_key = f"galleries/sha256/{hashlib.sha256(people.read_bytes()).hexdigest()}/people.tar.gz"
    s3.put_object(Bucket=bucket, Key=old_key, Body=people.read_bytes())
    s3.put_object(Bucket=bucket, Key=ERASED_KEY, Body=json.dumps({"erased": ["obama"]}).encode())
    only_obama = Gallery.open(tmp_path / "g2", create=True)
    enroll_images(only_obama, load_detector(), "obama", [assets / "enroll" / "obama.jpg"])
    lobby = tmp_path / "lobby.tar.gz"
    only_obama.export_archive(lobby)
    previous = {"ComponentName": COMPONENT, "ComponentVersion": "1.0.0",
                "ComponentConfiguration": {"DefaultConfiguration": {"gallery_archives": ["people.tar.gz"]}},
                "Manifests": [{"Platform": {"os": "linux"}, "Artifacts": [{"URI": f"s3://{bucket}/{old_key}", "Digest": "x",
                                                                            "Algorithm": "SHA-256"}]}]}
    gg, stub = _gg(mocked_aws, ["1.0.0"], previous)
    captured: list = []
    _capture(gg, captured)
    _expect_create(stub, "1.0.1", captured)
    with stub:
        _run(mocked_aws, gg, built, version_spec="NEXT_PATCH", gallery_archives=[lobby])
    recipe = captured[0]
    assert sorted(recipe["ComponentConfiguration"]["DefaultConfiguration"]["gallery_archives"]) == ["lobby.tar.gz",
                                                                                                   "people.tar.gz"]
    shipped = {}
    for art in (a for m in recipe["Manifests"] for a in m["Artifacts"] if "/galleries/" in a["URI"]):
        key = art["URI"].split("/", 3)[3]
        assert key != old_key
        out = tmp_path / "shipped" / key.rsplit("/", 1)[-1]
        out.parent.mkdir(exist_ok=True)
        out.write_bytes(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
        shipped[out.name] = sorted(read_gallery_archive(out))  # the device's own reader accepts it
    assert shipped == {"people.tar.gz": ["miranda"], "lobby.tar.gz": []}
