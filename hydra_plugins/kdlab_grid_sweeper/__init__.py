"""kdlab's grid sweeper for Hydra (`hydra/sweeper=kdlab_grid`): a union of cartesian blocks (see `grid_sweeper`)."""
