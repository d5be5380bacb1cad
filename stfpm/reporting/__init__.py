"""What runs write for people: result tables, heatmaps, image panels and plots (given plain data; no model)."""
