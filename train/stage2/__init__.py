"""Stage-II job: the DistinctAD captioner trained on window feature shards and scored by the eval harness."""
