"""Data side of DistinctAD: annotation readers, shard builder, streaming readers, SynthMAD."""
