"""The realmodel task."""
