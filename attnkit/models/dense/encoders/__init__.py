"""Hierarchical encoders of the dense family; each returns one map per stage."""
