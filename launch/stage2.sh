#!/usr/bin/env bash
""":"
# This file is a bash script AND a Python program. To bash, the quotes on line 2 spell the no-op command `:`; it
# runs the two lines below and `exec`s Python on this same file, so it never reads further. To Python, line 2
# opens a string that the line after `exec` closes, so it skips all of this. Hence every documented form works:
#   bash launch/stage2.sh [CONFIG.yaml] [--section.key VALUE ...]      one process (NGPU=n: n local ranks)
#   deepspeed [--num_gpus 2 | --hostfile H ...] launch/stage2.sh ...   the deepspeed launcher runs it with python
# Without CONFIG.yaml the job's default YAML from the registry (train/jobs.py) is used.
if [ "${NGPU:-1}" -gt 1 ]; then exec deepspeed --num_gpus "$NGPU" "$0" "$@"; fi
exec "${PYTHON:-python}" "$0" "$@"
":"""

from distinctad.train.main import launch

launch("stage2")
