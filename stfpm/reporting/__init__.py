"""What runs write: result tables, visual reports, atomic file writes."""
