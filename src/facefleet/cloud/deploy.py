"""Staged OTA rollout: revise a thing group's LATEST Greengrass deployment with a new version.

A Greengrass deployment REPLACES the previous one for its target and removes components it
omits, so a rollout must start from the latest deployment and keep its other components.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from facefleet.cloud.aws import error_code
from facefleet.errors import FacefleetError

log = logging.getLogger(__name__)


class RolloutPolicy(BaseModel):
    """How fast the IoT job reaches the group's devices, when it gives up, and what a failure does."""

    model_config = ConfigDict(extra="forbid")
    base_rate_per_minute: int = Field(2, ge=1, le=1000, description="devices per minute at the start")
    increment_factor: float = Field(2.0, ge=1.1, le=5.0, description="rate multiplier after each success step")
    increase_after_succeeded: int = Field(5, ge=1, description="successful devices that raise the rate")
    maximum_per_minute: int = Field(50, ge=1, le=1000, description="rate cap")
    abort_failure_percent: float = Field(10.0, ge=0, le=100, description="cancel when this share of devices failed ...")
    abort_min_executed: int = Field(5, ge=1, description="... after at least this many finished")
    timeout_minutes: int = Field(60, ge=1, description="a device still in progress after this fails (timed out)")
    component_update_timeout_s: int = Field(120, ge=1, description="NOTIFY_COMPONENTS: how long a component may defer")
    validation_timeout_s: int = Field(60, ge=1, description="how long the component has to validate new configuration")
    rollback: bool = Field(True, description="ROLLBACK a device whose deployment fails (else DO_NOTHING)")


def parse_set(items: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` pairs -> a merge document. VALUE is JSON when it parses (numbers, true,
    objects), else a string; ``a/b=1`` sets a nested key."""
    merge: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        path = [p for p in key.strip().split("/") if p]
        if not sep or not path or any(not p.strip() for p in key.strip("/").split("/")):
            raise FacefleetError(f"malformed --set {item!r}: expected KEY=VALUE (nested keys as a/b=VALUE)")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        node = merge
        for p in path[:-1]:
            nxt = node.setdefault(p, {})
            if not isinstance(nxt, dict):
                raise FacefleetError(f"malformed --set {item!r}: {p} is set to a value and used as a folder")
            node = nxt
        node[path[-1]] = value
    return merge


def build_request(*, target_arn: str, component: str, version: str, latest: dict | None,
                  merge: dict[str, Any], reset: list[str], policy: RolloutPolicy, name: str | None = None) -> dict:
    """The CreateDeployment request: the latest deployment's components plus ours at ``version``."""
    components = dict((latest or {}).get("components") or {})
    ours: dict[str, Any] = {"componentVersion": version}
    if merge or reset:
        update: dict[str, Any] = {}
        if merge:
            update["merge"] = json.dumps(merge, sort_keys=True)
        if reset:
            update["reset"] = list(reset)
        ours["configurationUpdate"] = update
    components[component] = ours
    return {
        "targetArn": target_arn,
        "deploymentName": name or f"{component} {version}",
        "components": components,
        "deploymentPolicies": {
            "failureHandlingPolicy": "ROLLBACK" if policy.rollback else "DO_NOTHING",
            "componentUpdatePolicy": {"action": "NOTIFY_COMPONENTS", "timeoutInSeconds": policy.component_update_timeout_s},
            "configurationValidationPolicy": {"timeoutInSeconds": policy.validation_timeout_s},
        },
        "iotJobConfiguration": {
            "jobExecutionsRolloutConfig": {
                "exponentialRate": {
                    "baseRatePerMinute": policy.base_rate_per_minute,
                    "incrementFactor": policy.increment_factor,
                    "rateIncreaseCriteria": {"numberOfSucceededThings": policy.increase_after_succeeded},
                },
                "maximumPerMinute": policy.maximum_per_minute,
            },
            "abortConfig": {"criteriaList": [{
                "failureType": "FAILED", "action": "CANCEL",
                "thresholdPercentage": policy.abort_failure_percent,
                "minNumberOfExecutedThings": policy.abort_min_executed,
            }]},
            "timeoutConfig": {"inProgressTimeoutInMinutes": policy.timeout_minutes},
        },
    }


def thing_group_arn(iot, group: str) -> str:
    try:
        return iot.describe_thing_group(thingGroupName=group)["thingGroupArn"]
    except Exception as e:
        if error_code(e) == "ResourceNotFoundException":
            raise FacefleetError(f"unknown thing group {group!r}") from None
        raise


def component_arn(account: str, region: str, component: str, version: str) -> str:
    return f"arn:aws:greengrass:{region}:{account}:components:{component}:versions:{version}"


def check_version(gg, arn: str, component: str, version: str) -> None:
    try:
        gg.describe_component(arn=arn)
    except Exception as e:
        if error_code(e) == "ResourceNotFoundException":
            raise FacefleetError(f"component {component} version {version} does not exist (publish it first)") from None
        raise


def latest_deployment(gg, target_arn: str) -> dict | None:
    found = gg.list_deployments(targetArn=target_arn, historyFilter="LATEST_ONLY").get("deployments", [])
    if not found:
        return None
    return gg.get_deployment(deploymentId=found[0]["deploymentId"])


def prepare(gg, iot, sts, *, region: str, component: str, version: str, thing_group: str,
            merge: dict, reset: list[str], policy: RolloutPolicy) -> dict:
    """Check the inputs against AWS and build the request (nothing is changed)."""
    target = thing_group_arn(iot, thing_group)
    account = sts.get_caller_identity()["Account"]
    check_version(gg, component_arn(account, region, component, version), component, version)
    latest = latest_deployment(gg, target)
    if latest:
        kept = sorted(set(latest.get("components") or {}) - {component})
        log.info("revising deployment %s of %s; keeping %s", latest.get("deploymentId"), thing_group, kept or "no other components")
    return build_request(target_arn=target, component=component, version=version, latest=latest,
                         merge=merge, reset=reset, policy=policy)


def watch(iot, job_id: str, report: Callable[[str], None], interval_s: float = 10.0,
          sleep: Callable[[float], None] = time.sleep, max_polls: int | None = None) -> bool:
    """Follow the deployment's IoT job until it ends. True when it completed without failures."""
    polls = 0
    last = None
    while True:
        job = iot.describe_job(jobId=job_id)["job"]
        status = job.get("status", "UNKNOWN")
        d = job.get("jobProcessDetails") or {}
        counts = {k: d.get(f"numberOf{k}Things", 0) for k in
                  ("Queued", "InProgress", "Succeeded", "Failed", "Rejected", "TimedOut", "Canceled", "Removed")}
        line = f"job {job_id}: {status} " + " ".join(f"{k.lower()} {v}" for k, v in counts.items() if v)
        if line != last:
            report(line)
            last = line
        if status in ("CANCELED", "DELETION_IN_PROGRESS"):
            reason = job.get("reasonCode") or job.get("comment") or "aborted"
            report(f"job {job_id} was {status.lower()}: {reason}")
            return False
        if status == "COMPLETED":
            return not (counts["Failed"] or counts["Rejected"] or counts["TimedOut"])
        polls += 1
        if max_polls is not None and polls >= max_polls:
            report(f"job {job_id} still {status} after {polls} polls")
            return False
        sleep(interval_s)
