"""Training the DiScoFormer: data, corruptions, losses, the trainer, and the fits after it (distill, repair)."""
