"""Template tags of the bus's pages."""
