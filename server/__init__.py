"""fedtl ServerApp: averages head weights and writes the run report."""
