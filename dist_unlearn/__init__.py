"""dist_unlearn."""
