"""Units of work (Prefect tasks) and the pure code they call."""
