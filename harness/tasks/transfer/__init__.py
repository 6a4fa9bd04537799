"""The transfer task."""
