"""Redis adapters: the shared cache and the per-process copies kept exact by it."""
