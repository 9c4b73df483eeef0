"""attnkit: a research workbook for attention in vision models.

Layering (one way only): ``attention`` <- ``models`` <- ``train``, ``analysis`` <- ``viz`` <- notebooks.
"""

__version__ = "0.1.0"
