"""Operator / cloud tools: never imported by device code (runtime, recognition, vision, component, transport)."""
