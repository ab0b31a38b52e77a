"""The frozen ImageNet VGG16, its public statistics, and the features it extracts (cached)."""
