"""attnbench measurement harness: inputs, accuracy, timing, memory, results, scaling, report."""
