"""Command-line tools around the jobs: frame-feature extraction, generation, the ablation runner, the quick start."""
