"""Faces to identities: detector/recognizer wrappers, tracker, gallery, pipeline."""
