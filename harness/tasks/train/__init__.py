"""The train task."""
