"""Test double of HailoRT's ``hailo_platform`` (4.18-4.23), for tests only.

Mirrors the module layout and the exports of the real package (hailo_platform/__init__.py of
each tag); the classes live in ``hailo_platform.pyhailort.pyhailort`` as in the real bindings.
``__version__`` follows the surface chosen with ``pyhailort.use_surface``.
"""

from hailo_platform.pyhailort import pyhailort as _ph
from hailo_platform.pyhailort.pyhailort import (  # noqa: F401
    HEF,
    AsyncInferJob,
    Device,
    FormatOrder,
    FormatType,
    HailoRTException,
    HailoRTStreamAbortedByUser,
    HailoSchedulingAlgorithm,
    HailoStreamInterface,
    VDevice,
)

__version__ = ".".join(str(x) for x in _ph.DOUBLE.version)


def __getattr__(name: str):
    # __init__.py v4.23.0:31,59 exports HailoCommunicationClosedException; v4.18.0 has no such class
    if name == "HailoCommunicationClosedException":
        return getattr(_ph, name)
    raise AttributeError(f"module 'hailo_platform' has no attribute {name!r}")
