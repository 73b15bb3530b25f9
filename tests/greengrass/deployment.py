"""A deployment simulator with the Greengrass nucleus's configuration and lifecycle semantics
(test double, lives under tests/).

One core device, one component. ``deploy()`` takes what a cloud deployment carries to the
device (the version's recipe, its artifacts, the component's configurationUpdate and the
failure handling policy) and does what the nucleus does with it. Every behaviour cites
aws-greengrass/aws-greengrass-nucleus at tag v2.18.2 (N: = src/main/java/com/aws/greengrass/ at that tag):

- Configuration of a version N -> N+1 (N: componentmanager/KernelConfigResolver.java:352-396):
  start from a copy of the RUNNING configuration; remove the ``reset`` paths (JSON pointers; ""
  resets everything; an array element cannot be reset: KernelConfigResolver.java:398-425); merge the
  new recipe's DefaultConfiguration at timestamp 1, which never overwrites an existing key
  (Topic.java:223-238: an older timestamp loses; existing keys carry the deployment time they
  were written at, DeploymentActivator.java:105-146) but does add missing ones, and replaces a
  node whose kind (object vs value) differs (config/Topics.java:330-360); then merge
  ``configurationUpdate.merge`` at the deployment's timestamp (overwrites). A key that only the
  old version's defaults had is kept: the copy of the running configuration carries it.
  Arrays are values (replaced whole).
- ``{artifacts:path}`` is <root>/packages/artifacts/<component>/<version>, one folder per version
  (N: util/NucleusPaths.java:126-140, componentmanager/ComponentStore.java:60-61);
  ``{artifacts:decompressedPath}`` is .../artifacts-unarchived/<component>/<version>; ``{work:path}``
  is <root>/work/<component>, shared by every version (NucleusPaths.java:172-177). Placeholders
  ``{namespace:key}`` are interpolated in lifecycle scripts (KernelConfigResolver.java:81, 497-606).
- Artifacts are downloaded into the version's folder and their Digest checked; a mismatch fails
  the deployment (N: componentmanager/builtins/ArtifactDownloader.java:130-150).
- Configuration validation is asked of the RUNNING component only when the deployment does not
  change its version and changes its configuration (N: deployment/DynamicComponentConfigurationValidator.java:90-131);
  a REJECTED answer fails the deployment with nothing changed (FAILED_NO_STATE_CHANGE,
  DynamicComponentConfigurationValidator.java:80-87; DeploymentConfigMerger.java:149-153).
- A version change re-runs Install then Run; lifecycle scripts run with ``sh -c``
  (N: util/platforms/unix/UnixPlatform.java:733). Install also runs at every nucleus start.
- Lifecycle errors: an ERRORED report (a failed Install, a Run that errors) from NEW, STARTING or
  RUNNING counts; the service is restarted; the 3rd continual ERRORED makes it BROKEN
  (N: lifecyclemanager/Lifecycle.java:80-81, 131-132, 227-252).
- A service that goes BROKEN during a deployment fails it (COMPONENT_BROKEN,
  N: deployment/DeploymentConfigMerger.java:261-300). failureHandlingPolicy defaults to ROLLBACK
  (N: deployment/model/DeploymentDocument.java:78-80): the configuration snapshot taken before the
  merge (version and configuration) is restored and the services are reinstalled and started
  again (N: deployment/activator/DefaultActivator.java:56-68, 125-141, 152-213):
  FAILED_ROLLBACK_COMPLETE. DO_NOTHING leaves the device as the failure left it:
  FAILED_ROLLBACK_NOT_REQUESTED.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import os
import re
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MAXIMUM_CONTINUAL_ERROR = 3  # Lifecycle.java:80-81
DEFAULT_TIMESTAMP = 1  # KernelConfigResolver.java:383-385
PLACEHOLDER = re.compile(r"\{([.\w-]+):([^:}]*)}")  # KernelConfigResolver.java:81


class ProcessError(Exception):
    """What the component's Run does when it cannot serve: reports ERRORED (or exits non-zero)."""


@dataclass
class Started:
    """What a started component process sees."""

    version: str
    configuration: dict
    artifacts: Path
    work: Path
    thing: str


@dataclass
class DeploymentResult:
    status: str  # SUCCESSFUL | FAILED_NO_STATE_CHANGE | FAILED_ROLLBACK_COMPLETE | FAILED_ROLLBACK_NOT_REQUESTED
    reason: str = ""
    validated: bool = False  # the running component was asked to validate the configuration


@dataclass
class _Node:
    """A configuration value with the timestamp it was written at (config/Topic.java)."""

    value: Any
    ts: int


def _to_nodes(doc: Any, ts: int) -> Any:
    if isinstance(doc, dict):
        return {k: _to_nodes(v, ts) for k, v in doc.items()}
    return _Node(copy.deepcopy(doc), ts)


def _to_pojo(tree: Any) -> Any:
    if isinstance(tree, dict):
        return {k: _to_pojo(v) for k, v in tree.items()}
    return copy.deepcopy(tree.value)


def _merge(tree: dict, doc: dict, ts: int) -> None:
    """Topics.updateFromMap with MERGE (config/Topics.java:309-360; Topic.withNewerValue:223-238)."""
    for key, value in doc.items():
        existing = tree.get(key)
        if isinstance(value, dict):
            if not isinstance(existing, dict):  # absent, or a value: becomes an object
                tree[key] = existing = {}
            _merge(existing, value, ts)
        elif isinstance(existing, _Node):
            if ts >= existing.ts and existing.value != value:  # an older timestamp never wins
                tree[key] = _Node(copy.deepcopy(value), ts)
        else:  # absent, or an object: becomes a value
            tree[key] = _Node(copy.deepcopy(value), ts)


def _reset(tree: dict, pointer: str) -> dict:
    """KernelConfigResolver.removeKeysFromConfigWhichAreReset (398-425)."""
    if pointer == "":
        return {}
    parts = [p.replace("~1", "/").replace("~0", "~") for p in pointer.split("/")[1:]]
    if any(p.isdigit() for p in parts):  # an array element: not supported, logged and skipped
        return tree
    node = tree
    for p in parts[:-1]:
        node = node.get(p)
        if not isinstance(node, dict):
            return tree
    node.pop(parts[-1], None)
    return tree


@dataclass
class Nucleus:
    """One core device running one component; ``start`` is the component's process."""

    root: Path
    component: str
    start: Callable[[Started], None]
    validate: Callable[[dict], tuple[bool, str]] | None = None  # a component that subscribed to validation
    thing: str = "pi-1"
    platform: str = "amd64"
    env: dict[str, str] = field(default_factory=dict)
    version: str | None = None
    state: str = "NEW"
    config: dict = field(default_factory=dict)  # timestamped tree
    clock: int = 1_000  # deployment timestamps (ms); always > DEFAULT_TIMESTAMP
    recipes: dict[str, dict] = field(default_factory=dict)
    log: list[str] = field(default_factory=list)

    # ---- paths (NucleusPaths.java) -----------------------------------------------------------------
    def artifacts_path(self, version: str) -> Path:
        p = self.root / "packages" / "artifacts" / self.component / version
        p.mkdir(parents=True, exist_ok=True)
        return p

    def work_path(self) -> Path:
        p = self.root / "work" / self.component
        p.mkdir(parents=True, exist_ok=True)
        return p

    @property
    def configuration(self) -> dict:
        return _to_pojo(self.config)

    # ---- deployment -------------------------------------------------------------------------------
    def deploy(self, recipe: dict, fetch: Callable[[str], bytes], update: dict | None = None,
               policy: str = "ROLLBACK") -> DeploymentResult:
        """``recipe``: the version's recipe (as published); ``fetch(uri) -> bytes`` downloads an
        artifact; ``update``: the component's configurationUpdate ({"merge": JSON text, "reset": [...]})."""
        version = recipe["ComponentVersion"]
        self.clock += 1_000
        try:
            self._download(recipe, fetch)
        except ProcessError as e:
            return DeploymentResult("FAILED_NO_STATE_CHANGE", str(e))
        self.recipes[version] = recipe
        proposed = self._resolve(recipe, update or {}, self.clock)
        version_changes = version != self.version
        validated = False
        config_changes = self.version is not None and _to_pojo(proposed) != self.configuration
        subscribed = self.validate is not None and self.state == "RUNNING"  # only a running, subscribed component
        if config_changes and not version_changes and subscribed:
            validated = True
            ok, message = self.validate(_to_pojo(proposed))
            if not ok:
                return DeploymentResult("FAILED_NO_STATE_CHANGE", f"component rejected the configuration: {message}", validated)
        snapshot = (self.version, copy.deepcopy(self.config), self.state)
        self.version, self.config = version, proposed
        if version_changes or snapshot[2] != "RUNNING":
            self._run_lifecycle()
        else:
            self._notify_running()
        if self.state == "BROKEN":
            reason = f"{self.component} is BROKEN (COMPONENT_BROKEN)"
            if policy == "ROLLBACK":
                self.version, self.config, _ = snapshot
                self.log.append(f"rollback to {self.version}")
                if self.version is not None:
                    self.state = "NEW"
                    self._run_lifecycle()
                return DeploymentResult("FAILED_ROLLBACK_COMPLETE", reason, validated)
            return DeploymentResult("FAILED_ROLLBACK_NOT_REQUESTED", reason, validated)
        return DeploymentResult("SUCCESSFUL", "", validated)

    def restart(self) -> None:
        """A nucleus (or device) restart: Install runs again, then Run."""
        self.state = "NEW"
        self._run_lifecycle()

    # ---- internals ----------------------------------------------------------------------------------
    def _manifest(self, recipe: dict) -> dict:
        for m in recipe.get("Manifests", []):
            if (m.get("Platform") or {}).get("architecture", self.platform) in (self.platform, "*"):
                return m
        raise ProcessError(f"no manifest for {self.platform}")

    def _download(self, recipe: dict, fetch: Callable[[str], bytes]) -> None:
        folder = self.artifacts_path(recipe["ComponentVersion"])
        for art in self._manifest(recipe).get("Artifacts", []):
            name = art["URI"].rsplit("/", 1)[-1]
            target = folder / name
            if target.is_file():
                continue
            data = fetch(art["URI"])
            if "Digest" in art and base64.b64encode(hashlib.sha256(data).digest()).decode() != art["Digest"]:
                raise ProcessError(f"Failed integrity check for the downloaded artifact {name}")
            target.write_bytes(data)

    def _resolve(self, recipe: dict, update: dict, ts: int) -> dict:
        tree = copy.deepcopy(self.config)
        for pointer in update.get("reset") or []:
            tree = _reset(tree, pointer)
        defaults = (recipe.get("ComponentConfiguration") or {}).get("DefaultConfiguration") or {}
        _merge(tree, defaults, DEFAULT_TIMESTAMP)
        if update.get("merge"):
            _merge(tree, json.loads(update["merge"]), ts)
        for leaf in _leaves(tree):  # DeploymentActivator.java:139-146: REPLACE at the deployment time
            leaf.ts = max(leaf.ts, ts)
        return tree

    def _interpolate(self, text: str) -> str:
        values = {
            ("artifacts", "path"): str(self.artifacts_path(self.version)),
            ("artifacts", "decompressedPath"): str(self.root / "packages" / "artifacts-unarchived" / self.component / self.version),
            ("work", "path"): str(self.work_path()),
            ("kernel", "rootPath"): str(self.root),
            ("iot", "thingName"): self.thing,
        }
        return PLACEHOLDER.sub(lambda m: values.get((m[1], m[2]), m[0]), text)

    def _script(self, step: str) -> str | None:
        life = self._manifest(self.recipes[self.version]).get("Lifecycle") or {}
        s = life.get(step)
        if isinstance(s, dict):
            s = s.get("Script")
        return self._interpolate(s) if s else None

    def _run_lifecycle(self) -> None:
        """NEW -> (Install) -> STARTING -> (Run) -> RUNNING; ERRORED restarts, the 3rd makes BROKEN."""
        errors = 0
        self.state = "NEW"
        while True:
            try:
                install = self._script("Install")
                if install:
                    r = subprocess.run(["sh", "-c", install], capture_output=True, text=True, timeout=900,
                                       env={"PATH": os.defpath, **self.env})  # the nucleus's env, not ours
                    if r.returncode != 0:
                        raise ProcessError(f"Install exited {r.returncode}: {(r.stderr or r.stdout).strip()[-300:]}")
                self.state = "STARTING"
                self.start(Started(self.version, self.configuration, self.artifacts_path(self.version), self.work_path(),
                                   self.thing))
                self.state = "RUNNING"
                self.log.append(f"{self.version} RUNNING")
                return
            except ProcessError as e:
                errors += 1
                self.log.append(f"{self.version} ERRORED ({errors}): {e}")
                if errors >= MAXIMUM_CONTINUAL_ERROR:
                    self.state = "BROKEN"
                    self.log.append(f"{self.version} BROKEN")
                    return
                self.state = "NEW" if self.state == "NEW" else "STARTING"

    def _notify_running(self) -> None:
        """A configuration-only change reaches a running component through its configuration
        subscription; the process keeps running (no restart)."""
        self.log.append(f"{self.version} configuration updated")


def _leaves(tree: dict):
    for v in tree.values():
        if isinstance(v, dict):
            yield from _leaves(v)
        else:
            yield v
