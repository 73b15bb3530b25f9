"""States and inference contexts, under the names Hailo's code imports (dfc_api.md §1)."""

from enum import StrEnum


class States(StrEnum):
    HAILO_MODEL = "hailo_model"
    FP_OPTIMIZED_MODEL = "fp_optimized_model"
    QUANTIZED_MODEL = "quantized_model"
    COMPILED_MODEL = "compiled_model"


class InferenceContext(StrEnum):
    SDK_NATIVE = "sdk_native"
    SDK_FP_OPTIMIZED = "sdk_fp_optimized"
    SDK_QUANTIZED = "sdk_quantized"
    SDK_HAILO_HW = "sdk_hailo_hw"
