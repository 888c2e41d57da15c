"""torch.optim stand-in (imported, never used, by wbia/algo/detect)."""
