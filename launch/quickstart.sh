#!/usr/bin/env bash
# The whole DistinctAD pipeline on the embedded SynthMAD default, one command:
#   SynthMAD -> frames shards -> Stage-I -> features (vanilla CLIP, CLIP-AD) -> Stage-II (A0, C3) -> generate -> eval
# Each step is printed as the command you would run on real MAD data; re-running reuses finished steps.
#   bash launch/quickstart.sh [--work work/quickstart] [--fresh] [--help]
set -euo pipefail
exec "${PYTHON:-python}" -m distinctad.train.tools.quickstart "$@"
