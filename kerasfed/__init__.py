"""kerasfed."""
