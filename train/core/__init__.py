"""The framework every job shares: config, shared config sections, ranks, DeepSpeed engine, loop, checkpoints,
tracking, the Task protocol and the job registry's JobSpec. Nothing here knows any one job."""
