"""fedtl ClientApp: one site of the federation."""
