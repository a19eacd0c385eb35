"""Model definitions, one file per paper, grouped by family (see DESIGN.md)."""
