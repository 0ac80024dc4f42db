"""What drives experiments over both tasks: sweeps of seeds and grids, one report of many runs,
the paper's published rows. Above the tasks: it imports them, they never import it."""
