"""Camera capture: decoders (OpenCV or PyAV/FFmpeg), live-vs-finite sources, a reader per camera
that keeps only the newest frame of a live source, and per-camera statistics."""
