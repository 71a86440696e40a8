"""Names of the CLIP architectures DistinctAD knows, without importing open_clip (config modules use them)."""

TINY_MODEL = "distinctad-tiny"
"""Name of the tiny test / SynthMAD architecture (``model_configs/distinctad-tiny.json``, 64-wide, 2+2 layers)."""

DEFAULT_MODEL = "ViT-B-32"
"""The default Stage-I architecture (MAD's features are CLIP ViT-B/32)."""
