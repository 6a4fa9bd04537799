"""attnbench's Ray launcher for Hydra (``hydra/launcher=attnbench_ray``): see ``docs/ray.md``."""
