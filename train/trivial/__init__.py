"""The trivial job: a small MLP regression that proves engine, checkpointing and tracking end to end."""
