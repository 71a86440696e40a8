"""Data side of DistinctAD: annotation readers, shard builder, streaming readers, SynthMAD.

``ASSETS`` is the folder of real MAD data shipped with the package (MAD-Eval CSV, split lists, IMDb map, their
licence; see ``data/assets/README.md``).
"""

from pathlib import Path

ASSETS = Path(__file__).resolve().parent / "assets"
"""Folder holding madeval_anno.csv, mad_split.json, mad2imdb.json and LICENSE.autoad-zero."""
