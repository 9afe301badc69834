"""Sub-commands of the ``autoprune`` CLI, one module each."""
