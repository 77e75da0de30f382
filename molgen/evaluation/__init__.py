"""Evaluation: generation metrics, the NSPDK kernel, density metrics, decoys, and the report that
``molgen evaluate`` and ``benchmarks/run_all.py`` share (docs/design.md, section 8)."""
