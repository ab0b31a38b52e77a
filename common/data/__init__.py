"""A site's images: listing and decoding folders, partitions, simulated scenarios and shifts."""
