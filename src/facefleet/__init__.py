"""facefleet: face recognition for fleets of Raspberry Pi + Hailo-8 cameras."""

__version__ = "0.1.0"
