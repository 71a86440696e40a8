#!/usr/bin/env bash
""":"
# This file is both a bash script and a Python program, so every documented form works:
#   bash launch/trivial.sh [CONFIG.yaml] [--section.key VALUE ...]        one process (NGPU=n: n local ranks)
#   deepspeed launch/trivial.sh [CONFIG.yaml] [...]                        the deepspeed launcher runs it with python
#   deepspeed --num_gpus 2 launch/trivial.sh ...                           two ranks (two CPU processes without GPUs)
#   deepspeed --hostfile H --num_nodes 2 ... launch/trivial.sh ...         several nodes
# Without CONFIG.yaml it uses launch/configs/trivial.yaml.
if [ "${NGPU:-1}" -gt 1 ]; then exec deepspeed --num_gpus "$NGPU" "$0" "$@"; fi
exec "${PYTHON:-python}" "$0" "$@"
":"""
import sys
from pathlib import Path

from distinctad.train.main import launch

launch("trivial", sys.argv[1:], default_config=Path(__file__).resolve().parent / "configs" / "trivial.yaml")
