"""namus-edge: models/backends package."""
