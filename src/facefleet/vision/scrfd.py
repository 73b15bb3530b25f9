"""Where ``Detections`` used to live: SCRFD decoding is now the plugin
``vision/detectors/scrfd.py``; this module keeps older imports working."""

from facefleet.vision.detections import Detections, postprocess

__all__ = ["Detections", "postprocess"]
