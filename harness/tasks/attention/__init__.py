"""The attention task: one attention operator on synthetic inputs (accuracy, time, memory)."""
