"""molgen: a molecular design toolkit built around one DiScoFormer (score + density heads)."""

__version__ = "0.1.0"
