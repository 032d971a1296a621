"""The drift job's parts; `pipelines/drift.py` composes them (see docs/drift.md)."""
