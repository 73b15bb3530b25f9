"""Device-file access for the user the component runs as.

Why: Greengrass runs the component as ``ggc_user`` (posixUser default). That user is not in the
``video`` group that owns ``/dev/video*`` (root:video 0660), and ``/dev/hailo0`` is root-only
unless HailoRT's udev rule is installed. Without a check the camera thread retries forever and
the Hailo backend fails deep inside HailoRT; with it, start-up fails once with the exact fix.
"""

from __future__ import annotations

import grp
import os
import pwd
from collections.abc import Callable
from dataclasses import dataclass, field

from facefleet.config import ComponentConfig
from facefleet.errors import FacefleetError

HAILO_UDEV_FIX = ("echo 'SUBSYSTEM==\"hailo_chardev\", MODE=\"0666\"' | sudo tee /etc/udev/rules.d/51-hailo-udev.rules && "
                  "sudo udevadm control --reload-rules && sudo udevadm trigger")


def _user() -> str:
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return str(os.geteuid())


def _group(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


@dataclass
class DeviceCheck:
    """Which device files a configuration needs, and whether this process may open them.
    ``access``/``user`` are injectable so a test can play ggc_user while running as root."""

    access: Callable[[str, int], bool] = os.access
    user: Callable[[], str] = _user
    video_path: str = "/dev/video{}"
    hailo_path: str = "/dev/hailo0"
    checked: list[str] = field(default_factory=list)

    def devices(self, cfg: ComponentConfig) -> list[tuple[str, str]]:
        """(role, path) of every device file the configuration opens."""
        out = []
        for cam in cfg.cameras:
            src = cam.source.strip()
            if src.isdigit():
                out.append((f"camera {cam.id}", self.video_path.format(int(src))))
            elif src.startswith("/dev/"):
                out.append((f"camera {cam.id}", src))
        if cfg.models.backend == "hailo":
            out.append(("Hailo-8", self.hailo_path))
        return out

    def problems(self, cfg: ComponentConfig) -> list[str]:
        """One line per device that exists but cannot be opened read-write, with the fix. A
        device that is absent is not a permission problem (the camera thread retries)."""
        out = []
        for role, path in self.devices(cfg):
            self.checked.append(path)
            try:
                st = os.stat(path)
            except OSError:
                continue
            if self.access(path, os.R_OK | os.W_OK):
                continue
            group, user = _group(st.st_gid), self.user()
            if role == "Hailo-8" and st.st_gid == 0:
                fix = HAILO_UDEV_FIX
            elif st.st_gid == 0:
                fix = f"a udev rule giving {path} a group, then: sudo usermod -aG <that group> {user}"
            else:
                fix = f"sudo usermod -aG {group} {user} && sudo systemctl restart greengrass"
            out.append(f"{role}: {user} cannot open {path} (owner group {group}, mode {st.st_mode & 0o777:o}); fix: {fix}")
        return out

    def require(self, cfg: ComponentConfig) -> None:
        problems = self.problems(cfg)
        if problems:
            raise FacefleetError("; ".join(problems))
