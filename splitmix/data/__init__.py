"""Data layer: raw-format readers, acquisition, prepared cache, bundled minis, splits, budgets."""
