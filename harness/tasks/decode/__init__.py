"""The decode task: prefill a prompt, then time the per-token step against the cached state."""
