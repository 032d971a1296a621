"""`babelray eval`: retrieval quality of the real pipeline on public data (see docs/evaluation.md)."""
