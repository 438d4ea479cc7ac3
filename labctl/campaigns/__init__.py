"""Many pairs at once: the matrix, coverage, fuzzing."""
