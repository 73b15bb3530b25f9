"""Pure image and geometry code: letterbox, SCRFD decoding, NMS, alignment, quality."""
