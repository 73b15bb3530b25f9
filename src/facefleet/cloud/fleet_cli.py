"""``facefleet deploy`` and ``facefleet events``: roll out versions, consume the event stream."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from pathlib import Path

from facefleet.errors import FacefleetError

log = logging.getLogger(__name__)

DEFAULT_COMPONENT_CONFIG = "gdk-config.json"


def component_from_gdk(path: str) -> tuple[str, str | None]:
    """(component name, publish region) from gdk-config.json: one place for the operator's settings."""
    p = Path(path)
    if not p.is_file():
        raise FacefleetError(f"{p} not found: pass --component or run from the project folder")
    try:
        data = json.loads(p.read_text())
        (name, entry), = data["component"].items()
    except (json.JSONDecodeError, KeyError, ValueError, AttributeError):
        raise FacefleetError(f"{p}: not a GDK configuration with one component") from None
    return name, (entry.get("publish") or {}).get("region")


# ---- deploy ----------------------------------------------------------------------------------------
def cmd_deploy(args) -> int:
    from facefleet.cloud import aws
    from facefleet.cloud.deploy import RolloutPolicy, parse_set, prepare, watch

    merge = parse_set(args.set or [])
    component, gdk_region = (args.component, None) if args.component else component_from_gdk(args.gdk_config)
    region = args.region or gdk_region
    policy = RolloutPolicy(
        base_rate_per_minute=args.rate, increment_factor=args.increment, maximum_per_minute=args.max_per_minute,
        abort_failure_percent=args.abort_percent, abort_min_executed=args.abort_min, timeout_minutes=args.timeout_minutes,
        rollback=not args.no_rollback)

    @aws.aws_errors
    def run() -> int:
        gg, iot, sts = (aws.client(s, region, args.session) for s in ("greengrassv2", "iot", "sts"))
        request = prepare(gg, iot, sts, region=gg.meta.region_name, component=component, version=args.version,
                          thing_group=args.thing_group, merge=merge, reset=args.reset or [], policy=policy)
        if args.dry_run:
            print(json.dumps(request, indent=1))
            return 0
        resp = gg.create_deployment(**request)
        print(f"deployment {resp['deploymentId']} created (IoT job {resp.get('iotJobId')})")
        if not args.watch:
            return 0
        ok = watch(iot, resp["iotJobId"], print, interval_s=args.poll_s, gg=gg, deployment_id=resp["deploymentId"],
                   thing_group=args.thing_group)
        if not ok:
            raise FacefleetError(f"deployment {resp['deploymentId']} failed or was cancelled on some devices")
        print(f"deployment {resp['deploymentId']}: every device in {args.thing_group} has {component} {args.version}")
        return 0

    return run()


# ---- publish ---------------------------------------------------------------------------------------
def _progress_bars():
    """A rich progress bar per uploaded file, on stderr."""
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

    bars = Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                    console=Console(stderr=True), transient=False)

    def start(name: str, size: int):
        bars.start()
        task = bars.add_task(name, total=size)
        return lambda n: bars.advance(task, n)

    return bars, start


def cmd_publish(args) -> int:
    import subprocess

    from facefleet.cloud import aws
    from facefleet.cloud.publish import publish

    gdk = Path(args.gdk_config)
    component, gdk_region = component_from_gdk(args.gdk_config)
    entry = json.loads(gdk.read_text())["component"][component]
    region = args.region or gdk_region
    bucket = args.bucket or (entry.get("publish") or {}).get("bucket")
    if not bucket:
        raise FacefleetError(f"{gdk}: publish.bucket is not set (or pass --bucket)")
    build_dir = Path(args.build_dir) if args.build_dir else gdk.parent / "greengrass-build"
    if not args.skip_build:
        cmd = (entry.get("build") or {}).get("custom_build_command")
        if not cmd:
            raise FacefleetError(f"{gdk}: no custom_build_command to build with (or pass --skip-build)")
        r = subprocess.run(cmd if isinstance(cmd, list) else cmd.split(), cwd=gdk.parent, capture_output=True, text=True)
        if r.returncode != 0:
            last = (r.stderr or r.stdout).strip().splitlines()
            raise FacefleetError(f"build failed: {last[-1] if last else r.returncode}")
    bars, progress = _progress_bars()

    @aws.aws_errors
    def run():
        gg, s3, sts = (aws.client(s, region, args.session) for s in ("greengrassv2", "s3", "sts"))
        try:
            return publish(gg=gg, s3=s3, sts=sts, region=gg.meta.region_name, component=component,
                           version_spec=args.version or entry.get("version", "NEXT_PATCH"), bucket_prefix=bucket,
                           build_dir=build_dir, gallery_archives=[Path(a) for a in args.gallery_archive or []],
                           progress=progress, wait=not args.no_wait,
                           carry_galleries=not args.drop_gallery_archives)
        finally:
            bars.stop()

    res = run()
    up = [a.path.name for a in res.artifacts if a.uploaded]
    kept = [a.path.name for a in res.artifacts if not a.uploaded]
    print(f"published {res.component} {res.version} ({res.state or 'created'}) to s3://{res.bucket}: "
          f"uploaded {', '.join(up) or 'nothing'}" + (f"; already there: {', '.join(kept)}" if kept else ""))
    return 0


# ---- events ----------------------------------------------------------------------------------------
def _consumer(args):
    from facefleet.cloud.consumer import Consumer, open_store

    return Consumer(open_store(args.out), follow=sys.stdout if args.follow else None)


def _run_until_signal(stop: threading.Event, duration: float | None) -> None:
    def handler(_sig, _frame):
        stop.set()

    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, handler)
    stop.wait(duration)


def cmd_events(args) -> int:
    from facefleet.cloud import aws
    from facefleet.cloud.consumer import MqttSubscriber, consume_sqs

    consumer = _consumer(args)
    stop = threading.Event()
    try:
        if args.queue:
            sqs = aws.aws_errors(aws.client)("sqs", args.region, args.session)
            timer = threading.Timer(args.duration, stop.set) if args.duration else None
            if timer:
                timer.start()
            aws.aws_errors(consume_sqs)(sqs, args.queue, consumer, stop.is_set, wait_s=args.sqs_wait)
        else:
            host, port = args.broker, args.port
            if host is None:
                iot = aws.aws_errors(aws.client)("iot", args.region, args.session)
                host = aws.aws_errors(iot.describe_endpoint)(endpointType="iot:Data-ATS")["endpointAddress"]
                port = port or 8883
                if not (args.cert and args.key):
                    raise FacefleetError("AWS IoT Core needs --cert and --key (mTLS)")
            sub = MqttSubscriber(host, port or 1883, consumer.handle, cert=args.cert, key=args.key, ca=args.ca,
                                 client_id=args.client_id)
            try:
                if not sub.wait_ready(args.connect_timeout):
                    raise FacefleetError(f"broker {host}:{port or 1883} unreachable (no subscription after "
                                         f"{args.connect_timeout:.0f} s)")
                log.info("subscribed to %s on %s:%s", sub.topic, host, port or 1883)
                _run_until_signal(stop, args.duration)
            finally:
                sub.stop()
    finally:
        consumer.store.close()
    s = consumer.stats
    log.info("received %d, stored %d, duplicates %d, invalid %d", s.received, s.stored, s.duplicates, s.invalid)
    print(json.dumps({"received": s.received, "stored": s.stored, "duplicates": s.duplicates, "invalid": s.invalid}),
          file=sys.stderr)
    return 0


def cmd_events_schema(args) -> int:
    from facefleet.events import json_schema

    print(json.dumps(json_schema(), indent=1))
    return 0


def cmd_setup_rule(args) -> int:
    from facefleet.cloud import aws
    from facefleet.cloud.consumer import setup_rule

    @aws.aws_errors
    def run():
        iot, sqs = aws.client("iot", args.region, args.session), aws.client("sqs", args.region, args.session)
        return setup_rule(iot, sqs, rule_name=args.rule, queue_name=args.queue_name, role_arn=args.role_arn)

    rule, url = run()
    print(f"topic rule {rule} routes facefleet/+/events/# to {url}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("publish", help="publish a component version (like gdk component publish; models content-addressed)")
    p.add_argument("--gdk-config", default=DEFAULT_COMPONENT_CONFIG, help="name, version, bucket prefix and region")
    p.add_argument("--version", help="MAJOR.MINOR.PATCH or NEXT_PATCH (default: gdk-config.json's)")
    p.add_argument("--region")
    p.add_argument("--bucket", help="bucket prefix (the bucket is {prefix}-{region}-{account}, as with GDK)")
    p.add_argument("--build-dir", help="GDK build output (default: greengrass-build beside gdk-config.json)")
    p.add_argument("--skip-build", action="store_true", help="publish the existing build output as it is")
    p.add_argument("--gallery-archive", action="append", help="a 'facefleet gallery pack' archive to ship and merge on devices")
    p.add_argument("--drop-gallery-archives", action="store_true",
                   help="do not ship the gallery archives of the latest published version again")
    p.add_argument("--no-wait", action="store_true", help="do not wait until the version is DEPLOYABLE")
    p.set_defaults(func=cmd_publish, session=None)

    d = sub.add_parser("deploy", help="roll a component version out to a thing group (revises its latest deployment)")
    d.add_argument("--thing-group", required=True)
    d.add_argument("--version", required=True, help="component version (must be published)")
    d.add_argument("--set", action="append", metavar="KEY=VALUE", help="configuration merge, e.g. HAILO_REC_HEF=models/x.hef")
    d.add_argument("--reset", action="append", metavar="/KEY", help="configuration key to reset to the recipe default")
    d.add_argument("--component", help="component name (default: from gdk-config.json)")
    d.add_argument("--gdk-config", default=DEFAULT_COMPONENT_CONFIG)
    d.add_argument("--region")
    d.add_argument("--rate", type=int, default=2, help="devices per minute at the start")
    d.add_argument("--increment", type=float, default=2.0, help="rate factor per step")
    d.add_argument("--max-per-minute", type=int, default=50)
    d.add_argument("--abort-percent", type=float, default=10.0, help="cancel when this share of devices failed ...")
    d.add_argument("--abort-min", type=int, default=5, help="... after at least this many finished")
    d.add_argument("--timeout-minutes", type=int, default=60)
    d.add_argument("--no-rollback", action="store_true", help="leave failed devices as they are (default: ROLLBACK)")
    d.add_argument("--dry-run", action="store_true", help="print the CreateDeployment request; change nothing")
    d.add_argument("--watch", action="store_true", help="follow the IoT job; exit non-zero if it is aborted or fails")
    d.add_argument("--poll-s", type=float, default=10.0, help=argparse.SUPPRESS)
    d.set_defaults(func=_validated(cmd_deploy), session=None)

    e = sub.add_parser("events", help="consume match events (MQTT or SQS), or: events schema | events setup-rule")
    e.add_argument("--broker", help="MQTT broker host (default: the account's AWS IoT endpoint)")
    e.add_argument("--port", type=int, help="1883 for a plain broker, 8883 for IoT Core")
    e.add_argument("--cert", help="client certificate (mTLS, IoT Core)")
    e.add_argument("--key", help="private key (mTLS, IoT Core)")
    e.add_argument("--ca", help="CA bundle (e.g. AmazonRootCA1.pem)")
    e.add_argument("--queue", help="consume from this SQS queue URL instead of MQTT (see 'events setup-rule')")
    e.add_argument("--region")
    e.add_argument("--out", default="events.jsonl", help="JSONL file, or a .db/.sqlite file (SQLite)")
    e.add_argument("--follow", action="store_true", help="print a readable line per event")
    e.add_argument("--duration", type=float, help="stop after this many seconds (default: until Ctrl-C)")
    e.add_argument("--connect-timeout", type=float, default=15.0)
    e.add_argument("--client-id", help="MQTT client id; keep it stable so the broker holds events while you are away")
    e.add_argument("--sqs-wait", type=int, default=10, help=argparse.SUPPRESS)
    e.set_defaults(func=cmd_events, session=None)
    esub = e.add_subparsers(dest="events_command", required=False, parser_class=type(e))
    esub.add_parser("schema", help="print the JSON Schema events satisfy").set_defaults(func=cmd_events_schema)
    r = esub.add_parser("setup-rule", help="AWS IoT topic rule: facefleet/+/events/# -> an SQS queue")
    r.add_argument("--rule", default="facefleet_events_to_sqs")
    r.add_argument("--queue-name", default="facefleet-events")
    r.add_argument("--role-arn", required=True, help="IAM role AWS IoT assumes to send to SQS")
    r.add_argument("--region")
    r.set_defaults(func=cmd_setup_rule, session=None)


def _validated(fn):
    """Policy values come from flags; pydantic's range errors become one line."""

    def wrapper(args) -> int:
        from pydantic import ValidationError

        try:
            return fn(args)
        except ValidationError as e:
            err = e.errors()[0]
            raise FacefleetError(f"invalid rollout policy: {err['loc'][0]}: {err['msg']}") from None

    return wrapper
