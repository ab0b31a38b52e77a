"""Whole-federation simulations in one process."""
