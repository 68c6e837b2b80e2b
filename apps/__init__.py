"""Domain applications built on :mod:`core`."""
