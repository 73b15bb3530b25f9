"""``facefleet gallery erase NAME --thing-group G``: erase a person from the whole fleet.

Three things happen, and each is needed:

1. **Every device, also those offline now.** An AWS IoT *continuous* job targets the thing
   group, its document ``{"command": "erase", "name": NAME}``. IoT Core queues one execution per
   device and keeps it until the device asks (component/jobs.py follows the Jobs MQTT API), and
   a continuous job also reaches things added to the group later. A retained message on the
   command topic was the other option; it was not chosen: IoT Core keeps ONE retained message per
   topic (a second erase would replace the first for a device still offline) and has no per-device
   record of who acted on it, so "which devices confirmed" could not be answered.
2. **Which devices confirmed.** Each device reports its execution SUCCEEDED (or FAILED with the
   reason); the report lists the group's things against ``ListJobExecutionsForJob`` and, for a
   failure, ``DescribeJobExecution``'s statusDetails.
3. **Never shipped again.** The name is added to ``galleries/erased.json`` in the publish bucket
   (``{prefix}-{region}-{account}``); ``facefleet publish`` rewrites every gallery archive it ships
   (new or carried from the previous version) without the erased names.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from facefleet.cloud.aws import error_code
from facefleet.errors import FacefleetError

log = logging.getLogger(__name__)

ERASED_KEY = "galleries/erased.json"
MAX_ERASED = 100_000
TERMINAL = ("SUCCEEDED", "FAILED", "REJECTED", "REMOVED", "CANCELED", "TIMED_OUT")


# ---- the erase list in the publish bucket ------------------------------------------------------------
def read_erased(s3, bucket: str) -> set[str]:
    """The erased names publish honours; none when the bucket or the list does not exist yet."""
    try:
        body = s3.get_object(Bucket=bucket, Key=ERASED_KEY)["Body"].read(16 << 20)
    except Exception as e:
        if error_code(e) in ("NoSuchKey", "NoSuchBucket", "404", "NotFound"):
            return set()
        raise
    try:
        data = json.loads(body)
        names = data["erased"]
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ValueError
    except (ValueError, KeyError, TypeError):
        raise FacefleetError(f"s3://{bucket}/{ERASED_KEY} is not {{\"erased\": [names]}}: fix it before publishing") from None
    return set(names)


def record_erased(s3, bucket: str, name: str) -> set[str]:
    names = read_erased(s3, bucket)
    if name not in names:
        if len(names) >= MAX_ERASED:
            raise FacefleetError(f"s3://{bucket}/{ERASED_KEY} holds {MAX_ERASED} names already")
        names.add(name)
        s3.put_object(Bucket=bucket, Key=ERASED_KEY, Body=json.dumps({"erased": sorted(names)}, indent=1).encode(),
                      ContentType="application/json")
    return names


# ---- archives without erased names ------------------------------------------------------------------
def archive_without(path: Path, erased: set[str]) -> tuple[bytes | None, list[str]]:
    """The archive's bytes without the ``erased`` identities (and crops only they used), or
    (None, []) when it holds none of them. Read with the device's bounds (archives.read_members)."""
    from facefleet.archives import ARCHIVE_FORMAT, ARCHIVE_MANIFEST, read_members

    files = read_members(path)
    try:
        manifest = json.loads(files[ARCHIVE_MANIFEST].decode("utf-8"))
        identities = manifest["identities"]
        if manifest.get("format") != ARCHIVE_FORMAT or not isinstance(identities, dict):
            raise ValueError
    except (KeyError, ValueError, UnicodeDecodeError, TypeError):
        raise FacefleetError(f"gallery archive {path.name}: missing or unsupported {ARCHIVE_MANIFEST}") from None
    removed = sorted(n for n in identities if n in erased)
    if not removed:
        return None, []
    kept = {n: e for n, e in identities.items() if n not in erased}
    crops = sorted({c for e in kept.values() for c in (e.get("crops") or []) if isinstance(c, str)})
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for member, data in [(ARCHIVE_MANIFEST, json.dumps({**manifest, "identities": kept}, indent=1, sort_keys=True).encode()),
                             *((f"crops/{c}", files[f"crops/{c}"]) for c in crops if f"crops/{c}" in files)]:
            info = tarfile.TarInfo(member)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue(), removed


def scrub_archive(path: Path, erased: set[str], out_dir: Path) -> Path:
    """``path`` itself, or a copy of the same file name in ``out_dir`` without the erased names."""
    data, removed = archive_without(path, erased)
    if data is None:
        return path
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / path.name
    out.write_bytes(data)
    log.info("gallery archive %s: erased %s", path.name, ", ".join(removed))
    return out


def scrub_carried(s3, entry: dict, erased: set[str], work: Path, max_bytes: int = 512 << 20) -> Path | None:
    """A carried archive (its recipe artifact entry) downloaded and scrubbed: the new file to ship,
    or None when it holds no erased name (the entry is carried as it is)."""
    uri = entry.get("URI", "")
    if not uri.startswith("s3://") or "/" not in uri[5:]:
        raise FacefleetError(f"carried gallery archive {uri!r} is not an s3:// URI")
    bucket, key = uri[5:].split("/", 1)
    name = key.rsplit("/", 1)[-1]
    obj = s3.get_object(Bucket=bucket, Key=key)
    if obj.get("ContentLength", 0) > max_bytes:
        raise FacefleetError(f"carried gallery archive {name} is over {max_bytes >> 20} MB")
    src = work / "carried" / name
    src.parent.mkdir(parents=True, exist_ok=True)
    src.write_bytes(obj["Body"].read(max_bytes + 1))
    out = scrub_archive(src, erased, work / "scrubbed")
    return out if out != src else None


# ---- the job and its report -------------------------------------------------------------------------
def job_id_for(name: str, now: Callable[[], float] = time.time) -> str:
    """[a-zA-Z0-9_-]{1,64} (CreateJob): the name is hashed, a person's name never appears in it."""
    return f"facefleet-erase-{hashlib.sha256(name.encode()).hexdigest()[:12]}-{int(now())}"


def create_erase_job(iot, group: str, name: str, job_id: str) -> str:
    arn = iot.describe_thing_group(thingGroupName=group)["thingGroupArn"]
    iot.create_job(jobId=job_id, targets=[arn], targetSelection="CONTINUOUS",
                   document=json.dumps({"command": "erase", "name": name}),
                   description="facefleet gallery erase (the identity is in the document)")
    return job_id


@dataclass
class EraseReport:
    job_id: str
    status: dict[str, str] = field(default_factory=dict)    # thing -> execution status (PENDING: none yet)
    reasons: dict[str, str] = field(default_factory=dict)   # thing -> statusDetails message of a failure

    @property
    def confirmed(self) -> list[str]:
        return sorted(t for t, s in self.status.items() if s == "SUCCEEDED")

    @property
    def pending(self) -> list[str]:
        return sorted(t for t, s in self.status.items() if s not in TERMINAL)

    @property
    def failed(self) -> list[str]:
        return sorted(t for t, s in self.status.items() if s in TERMINAL and s != "SUCCEEDED")


def erase_report(iot, group: str, job_id: str) -> EraseReport:
    """Every thing of the group (recursively) with its execution's status; a thing without an
    execution yet is PENDING (offline since the job was made, or just joined the group)."""
    things = [t for page in iot.get_paginator("list_things_in_thing_group").paginate(thingGroupName=group, recursive=True)
              for t in page.get("things", [])]
    rep = EraseReport(job_id, {t: "PENDING" for t in things})
    for page in iot.get_paginator("list_job_executions_for_job").paginate(jobId=job_id):
        for ex in page.get("executionSummaries", []):
            thing = ex.get("thingArn", "").rsplit("/", 1)[-1]
            rep.status[thing] = (ex.get("jobExecutionSummary") or {}).get("status", "PENDING")
    for thing in rep.failed:
        try:
            details = iot.describe_job_execution(jobId=job_id, thingName=thing)["execution"].get("statusDetails") or {}
            rep.reasons[thing] = (details.get("detailsMap") or {}).get("message", "")
        except Exception as e:  # the report still lists the failure, without its reason
            log.warning("describe_job_execution %s: %s", thing, e)
    return rep


def watch(iot, group: str, job_id: str, sleep: Callable[[float], None] = time.sleep, poll_s: float = 10.0,
          max_polls: int = 360, on_report: Callable[[EraseReport], None] | None = None) -> EraseReport:
    """Poll until no device is pending (or ``max_polls``): devices offline for long stay pending."""
    rep = erase_report(iot, group, job_id)
    for _ in range(max_polls):
        if on_report:
            on_report(rep)
        if not rep.pending:
            break
        sleep(poll_s)
        rep = erase_report(iot, group, job_id)
    return rep


# ---- CLI --------------------------------------------------------------------------------------------
def _bucket_prefix(args) -> tuple[str, str | None]:
    """The publish bucket prefix and region: --bucket/--region, else gdk-config.json (as publish)."""
    gdk = Path(args.gdk_config)
    region = args.region
    prefix = args.bucket
    if gdk.is_file():
        try:
            (_, entry), = json.loads(gdk.read_text())["component"].items()
        except (json.JSONDecodeError, KeyError, ValueError, AttributeError):
            raise FacefleetError(f"{gdk}: not a GDK configuration with one component") from None
        publish = entry.get("publish") or {}
        prefix, region = prefix or publish.get("bucket"), region or publish.get("region")
    if not prefix:
        raise FacefleetError(f"no publish bucket: pass --bucket or run where {gdk} sets publish.bucket")
    return prefix, region


def print_report(rep: EraseReport) -> None:
    print(f"job {rep.job_id}: confirmed {len(rep.confirmed)}, pending {len(rep.pending)}, failed {len(rep.failed)}")
    for label, things in (("confirmed", rep.confirmed), ("pending", rep.pending)):
        if things:
            print(f"  {label}: {', '.join(things)}")
    for t in rep.failed:
        print(f"  failed: {t} ({rep.status[t]}{': ' + rep.reasons[t] if rep.reasons.get(t) else ''})")


def cmd_erase(args) -> int:
    from facefleet.cloud import aws
    from facefleet.recognition.gallery import validate_name

    name = validate_name(args.name)
    session, sleep = args.session, args.sleep  # injected by tests (moto/Stubber sessions, no waiting)
    prefix, region = _bucket_prefix(args) if not args.job_id else (None, args.region)

    @aws.aws_errors
    def run() -> EraseReport:
        iot = aws.client("iot", region, session)
        job = args.job_id
        if job is None:
            s3, sts = aws.client("s3", region, session), aws.client("sts", region, session)
            bucket = f"{prefix}-{iot.meta.region_name}-{sts.get_caller_identity()['Account']}"
            record_erased(s3, bucket, name)  # first: even if the job fails, no later version ships the name
            job = create_erase_job(iot, args.thing_group, name, job_id_for(name))
            print(f"{name}: erase job {job} on thing group {args.thing_group} (continuous: devices offline now and "
                  f"devices that join later run it); s3://{bucket}/{ERASED_KEY} updated: the next publish ships no "
                  "archive with the name")
        if not args.watch:
            return erase_report(iot, args.thing_group, job)
        return watch(iot, args.thing_group, job, sleep, args.poll_s, max(1, int(args.timeout_minutes * 60 / args.poll_s)))

    rep = run()
    print_report(rep)
    if args.watch and (rep.failed or rep.pending):
        return 1
    return 0


def register(sub) -> None:
    """``facefleet gallery erase``: added to the core CLI's ``gallery`` command."""
    import argparse

    gallery = sub.choices.get("gallery")
    if gallery is None:
        return
    gsub = next(a for a in gallery._actions if isinstance(a, argparse._SubParsersAction))
    p = gsub.add_parser("erase", help="erase a person from every device of a thing group (also those offline now) and "
                        "from every gallery archive the next publish ships; reports which devices confirmed")
    p.add_argument("name")
    p.add_argument("--thing-group", required=True)
    p.add_argument("--watch", action="store_true", help="wait until every device confirmed; exit 1 if one failed or "
                   "is still pending at --timeout-minutes")
    p.add_argument("--job-id", help="report on (or --watch) an erase job made before instead of making one")
    p.add_argument("--timeout-minutes", type=float, default=60.0)
    p.add_argument("--region")
    p.add_argument("--bucket", help="publish bucket prefix (the bucket is {prefix}-{region}-{account}, as publish)")
    p.add_argument("--gdk-config", default="gdk-config.json")
    p.add_argument("--poll-s", type=float, default=10.0, help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_erase, session=None, sleep=time.sleep)
