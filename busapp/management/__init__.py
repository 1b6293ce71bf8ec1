"""Management commands of the bus."""
