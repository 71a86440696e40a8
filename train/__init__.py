"""Training side of DistinctAD: config, DeepSpeed engine, Stage-I and Stage-II."""
