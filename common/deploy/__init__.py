"""Deployment plumbing at the edge: Flower's Control API, credentials, child processes."""
