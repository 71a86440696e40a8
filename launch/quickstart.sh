#!/usr/bin/env bash
""":"
# The whole DistinctAD pipeline on the embedded SynthMAD default, one command:
#   SynthMAD -> frames shards -> Stage-I -> features (vanilla CLIP, CLIP-AD) -> Stage-II (A0, C3) -> generate -> eval
# Each step is printed as the command you would run on real MAD data; re-running reuses finished steps.
#   bash launch/quickstart.sh [--work work/quickstart] [--fresh] [--help]
# A bash/Python polyglot like the job launchers (see launch/stage2.sh): bash execs Python on this file.
exec "${PYTHON:-python}" "$0" "$@"
":"""

from pathlib import Path

from distinctad.train.tools.quickstart import main

main(launch_dir=Path(__file__).resolve().parent)  # this clone's launchers and configs, whichever checkout is installed
