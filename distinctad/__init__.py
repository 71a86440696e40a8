"""DistinctAD: ``distinctad.train``, ``distinctad.data`` and ``distinctad.eval``."""

__version__ = "0.1.0"
