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


def deep_merge(base: dict, top: dict) -> dict:
    """``top`` over ``base``, recursively for objects (what the nucleus's MERGE does to a map)."""
    out = dict(base)
    for k, v in top.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def drop_path(doc: dict, pointer: str) -> dict:
    """``doc`` without the key a reset JSON pointer names (``/`` drops everything)."""
    parts = [p.replace("~1", "/").replace("~0", "~") for p in pointer.strip("/").split("/") if p]
    if not parts:
        return {}
    out = json.loads(json.dumps(doc))
    node = out
    for p in parts[:-1]:
        node = node.get(p) if isinstance(node, dict) else None
        if not isinstance(node, dict):
            return out
    node.pop(parts[-1], None)
    return out


def effective_update(previous: dict | None, merge: dict[str, Any], reset: list[str]) -> tuple[dict, list[str]]:
    """The configurationUpdate of a revision: the previous deployment's update for this component
    carried over (a device that joins the group later gets only the revision), minus what this
    revision resets, plus this revision's merge. Reset paths accumulate: the nucleus applies reset
    before merge (KernelConfigResolver.java:373-391), so carrying them is idempotent."""
    previous = previous or {}
    try:
        carried = json.loads(previous.get("merge") or "{}")
    except json.JSONDecodeError:
        raise FacefleetError("the latest deployment's configurationUpdate.merge is not JSON: fix it in the console") from None
    for path in reset:
        carried = drop_path(carried, path)
    paths = list(dict.fromkeys([*(previous.get("reset") or []), *reset]))
    return deep_merge(carried, merge), paths


# Gallery archives are named by the recipe's DefaultConfiguration, which never overwrites a key a
# device already has (KernelConfigResolver.java:380-385, timestamp 1): every deployment resets the
# key so the deployed version's list, whose files that version ships, is the one in force.
OWNED_BY_RECIPE = ("/gallery_archives",)


def build_request(*, target_arn: str, component: str, version: str, latest: dict | None,
                  merge: dict[str, Any], reset: list[str], policy: RolloutPolicy, name: str | None = None) -> dict:
    """The CreateDeployment request: the latest deployment's components plus ours at ``version``,
    with our effective configuration carried."""
    components = dict((latest or {}).get("components") or {})
    previous = (components.get(component) or {}).get("configurationUpdate")
    full_merge, paths = effective_update(previous, merge, [*reset, *(p for p in OWNED_BY_RECIPE if p not in reset)])
    update: dict[str, Any] = {"reset": paths}
    if full_merge:
        update["merge"] = json.dumps(full_merge, sort_keys=True)
    ours: dict[str, Any] = {"componentVersion": version, "configurationUpdate": update}
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
                "failureType": failure, "action": "CANCEL",
                "thresholdPercentage": policy.abort_failure_percent,
                "minNumberOfExecutedThings": policy.abort_min_executed,
            } for failure in ("FAILED", "REJECTED", "TIMED_OUT")]},
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
    """The version exists and is DEPLOYABLE (a FAILED or still-INITIATED one fails every device)."""
    try:
        described = gg.describe_component(arn=arn)
    except Exception as e:
        if error_code(e) == "ResourceNotFoundException":
            raise FacefleetError(f"component {component} version {version} does not exist (publish it first)") from None
        raise
    status = described.get("status") or {}
    state = status.get("componentState", "")
    if state and state != "DEPLOYABLE":
        errors = "; ".join(f"{k}: {v}" for k, v in (status.get("errors") or {}).items()) or status.get("message") or ""
        raise FacefleetError(f"component {component} version {version} is {state}, not DEPLOYABLE"
                             + (f": {errors}" if errors else " (wait for publish to finish)"))


def default_configuration(gg, arn: str) -> dict:
    """The version's recipe DefaultConfiguration (GetComponent returns the recipe as bytes)."""
    blob = gg.get_component(arn=arn, recipeOutputFormat="JSON")["recipe"]
    recipe = json.loads(blob.decode() if isinstance(blob, bytes) else blob)
    return (recipe.get("ComponentConfiguration") or {}).get("DefaultConfiguration") or {}


def check_configuration(defaults: dict, update: dict) -> None:
    """What a device that joins later runs: the version's defaults, reset, then the merge. It must
    pass the component's schema, or every such device would go ERRORED -> BROKEN."""
    from facefleet.config import parse_component_config

    cfg = deep_merge(defaults, json.loads(update.get("merge") or "{}"))
    cfg.pop("accessControl", None)
    try:
        parse_component_config(cfg, "(deployment configuration)")
    except FacefleetError as e:
        raise FacefleetError(f"refusing to deploy: {e}") from None


def unvalidated_warning(latest: dict | None, component: str, version: str, update: dict) -> str | None:
    """The nucleus asks a running component to validate new configuration only when the deployment
    does not change its version (DynamicComponentConfigurationValidator.java:90-126)."""
    before = ((latest or {}).get("components") or {}).get(component, {}).get("componentVersion")
    if before is None or before == version or not (update.get("merge") or update.get("reset")):
        return None
    return (f"{component} goes from {before} to {version}: the nucleus does not ask the running component to "
            "validate this configuration; the new version checks it at start and reports ERRORED, and after 3 "
            "errors the device goes BROKEN and the deployment fails (ROLLBACK restores the previous version)")


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
    arn = component_arn(account, region, component, version)
    check_version(gg, arn, component, version)
    latest = latest_deployment(gg, target)
    if latest:
        kept = sorted(set(latest.get("components") or {}) - {component})
        log.info("revising deployment %s of %s; keeping %s", latest.get("deploymentId"), thing_group, kept or "no other components")
    request = build_request(target_arn=target, component=component, version=version, latest=latest,
                            merge=merge, reset=reset, policy=policy)
    update = request["components"][component]["configurationUpdate"]
    check_configuration(default_configuration(gg, arn), update)
    warning = unvalidated_warning(latest, component, version, update)
    if warning:
        log.warning("%s", warning)
    return request


# ---- watching a continuous thing-group job ----------------------------------------------------------
# A thing-group deployment is a CONTINUOUS IoT job (targetSelection, iot service-2.json
# TargetSelection): it stays IN_PROGRESS for devices that join later and never COMPLETES. The
# rollout is judged per device: job executions (JobExecutionStatus: QUEUED, IN_PROGRESS,
# SUCCEEDED, FAILED, TIMED_OUT, REJECTED, REMOVED, CANCELED) against the group's members.
PENDING = ("QUEUED", "IN_PROGRESS")
FAILED = ("FAILED", "TIMED_OUT", "REJECTED")


def group_things(iot, group: str) -> set[str]:
    things: set[str] = set()
    for page in iot.get_paginator("list_things_in_thing_group").paginate(thingGroupName=group, recursive=True):
        things.update(page.get("things") or [])
    return things


def execution_states(iot, job_id: str) -> dict[str, str]:
    """Thing name -> status of its newest execution (a thing that re-joins gets a new one)."""
    newest: dict[str, tuple[int, str]] = {}
    for page in iot.get_paginator("list_job_executions_for_job").paginate(jobId=job_id):
        for e in page.get("executionSummaries") or []:
            thing = e["thingArn"].rsplit("/", 1)[-1]
            summary = e.get("jobExecutionSummary") or {}
            number = summary.get("executionNumber", 0)
            if thing not in newest or number >= newest[thing][0]:
                newest[thing] = (number, summary.get("status", "QUEUED"))
    return {t: s for t, (_, s) in newest.items()}


def failure_reason(gg, thing: str, deployment_id: str) -> str:
    """Why a core device failed this deployment (greengrassv2 ListEffectiveDeployments)."""
    try:
        for page in gg.get_paginator("list_effective_deployments").paginate(coreDeviceThingName=thing):
            for d in page.get("effectiveDeployments") or []:
                if d.get("deploymentId") == deployment_id:
                    types = ",".join((d.get("statusDetails") or {}).get("errorTypes") or [])
                    return f"{d.get('coreDeviceExecutionStatus')}: {d.get('reason') or 'no reason given'}" + (
                        f" [{types}]" if types else "")
    except Exception as e:  # the reason is a courtesy; the verdict does not depend on it
        return f"reason unavailable ({error_code(e) or type(e).__name__})"
    return "no effective deployment reported"


def verdict(job: dict, deployment_status: str, targets: set[str], states: dict[str, str]) -> bool | None:
    """True: every targeted device SUCCEEDED. False: the job was cancelled (abort criteria or by
    hand), the deployment was cancelled or superseded, or every device finished and some failed.
    None: still rolling out."""
    if job.get("status") in ("CANCELED", "DELETION_IN_PROGRESS") or deployment_status in ("CANCELED", "FAILED", "INACTIVE"):
        return False
    current = {t: states.get(t, "NOT_STARTED") for t in targets}
    if any(s in PENDING or s == "NOT_STARTED" for s in current.values()):
        return None
    return not any(s in FAILED for s in current.values())


def watch(iot, job_id: str, report: Callable[[str], None], interval_s: float = 10.0,
          sleep: Callable[[float], None] = time.sleep, max_polls: int | None = None, *,
          gg=None, deployment_id: str | None = None, thing_group: str | None = None) -> bool:
    """Follow the deployment until every device in the group has it (True) or it failed (False)."""
    polls = 0
    last = None
    while True:
        job = iot.describe_job(jobId=job_id)["job"]
        status = job.get("status", "UNKNOWN")
        dep_status = gg.get_deployment(deploymentId=deployment_id).get("deploymentStatus", "") if gg and deployment_id else ""
        targets = group_things(iot, thing_group) if thing_group else set()
        states = execution_states(iot, job_id)
        if not thing_group:  # no group to compare with: the devices the job has reached
            targets = set(states)
        counts: dict[str, int] = {}
        for t in targets:
            s = states.get(t, "NOT_STARTED")
            counts[s] = counts.get(s, 0) + 1
        line = f"job {job_id}: {status}" + (f", deployment {dep_status}" if dep_status else "") + ": " + (
            " ".join(f"{k.lower()} {v}" for k, v in sorted(counts.items())) or "no devices")
        if line != last:
            report(line)
            last = line
        ok = verdict(job, dep_status, targets, states)
        if ok is None and not targets and job.get("status") == "COMPLETED":
            ok = True
        if ok is False:
            if status in ("CANCELED", "DELETION_IN_PROGRESS"):
                report(f"job {job_id} was {status.lower()}: {job.get('reasonCode') or job.get('comment') or 'aborted'}")
            elif dep_status in ("CANCELED", "FAILED", "INACTIVE"):
                report(f"deployment {deployment_id} is {dep_status}"
                       + (" (a newer deployment replaced it)" if dep_status == "INACTIVE" else ""))
            failed = sorted(t for t in targets if states.get(t) in FAILED)
            for t in failed[:10]:
                report(f"  {t}: " + (failure_reason(gg, t, deployment_id) if gg and deployment_id else states[t]))
            if len(failed) > 10:
                report(f"  ... and {len(failed) - 10} more")
            return False
        if ok:
            if not targets:
                report(f"job {job_id}: the group has no devices yet; devices that join get this deployment")
            return True
        polls += 1
        if max_polls is not None and polls >= max_polls:
            report(f"job {job_id} still {status} after {polls} polls")
            return False
        sleep(interval_s)
