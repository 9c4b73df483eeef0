"""Figures: the thesis style, dataset views, attention overlays."""
