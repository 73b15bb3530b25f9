"""Test double of HailoRT's ``hailo_platform`` (4.18-4.23), for tests only.

Mirrors the module layout and the exports of the real package (hailort_api.md §1); the
classes live in ``hailo_platform.pyhailort.pyhailort`` as in the real bindings.
"""

from hailo_platform.pyhailort.pyhailort import (  # noqa: F401
    HEF,
    AsyncInferJob,
    FormatOrder,
    FormatType,
    HailoCommunicationClosedException,
    HailoRTException,
    HailoRTStreamAbortedByUser,
    HailoSchedulingAlgorithm,
    HailoStreamInterface,
    VDevice,
)

__version__ = "4.23.0"
