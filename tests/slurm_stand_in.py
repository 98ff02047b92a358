"""Slurm's commands played by scripts, for tests of what mai submits: the stand-in sbatch queues each
job script under the next job id and answers as sbatch does; srun runs its command here, once."""

import os
import sys
from pathlib import Path

SBATCH = """#!/bin/bash
# sbatch: queue the job script under the next job id and answer as sbatch does.
touch "$SLURM_STAND_IN/submissions"
id=$(( $(wc -l < "$SLURM_STAND_IN/submissions") + 1 ))
echo "$*" >> "$SLURM_STAND_IN/submissions"
cp "${@: -1}" "$SLURM_STAND_IN/queue/$(printf %06d $id)"
echo "Submitted batch job $id"
"""

SQUEUE = """#!/bin/bash
# squeue: only `squeue --noheader --jobs ID --format %r`, the reason a queued job waits.
job="$SLURM_STAND_IN/queue/$(printf %06d $3)"
if [[ -e "$job.never" ]]; then echo DependencyNeverSatisfied; elif [[ -e "$job" ]]; then echo None; fi
"""

SCANCEL = """#!/bin/bash
# scancel ID: a cancelled job fails the jobs that wait for it.
rm -f "$SLURM_STAND_IN/queue/$(printf %06d $1)" "$SLURM_STAND_IN/queue/$(printf %06d $1).never"
echo "$1" >> "$SLURM_STAND_IN/failed"
"""

SRUN = """#!/bin/bash
# srun: run the command here, once.
while [[ $1 == -* ]]; do [[ $1 == -n ]] && shift; shift; done
exec "$@"
"""

SCONTROL = """#!/bin/bash
# scontrol: only `scontrol show hostnames NODELIST`, for a list of one node.
[[ "$1 $2" == "show hostnames" ]] && echo "$3"
"""


def slurm_stand_in(folder: Path) -> dict:
    """An environment whose PATH finds the stand-ins for Slurm's commands, and datatrove's own scripts."""
    (folder / "queue").mkdir(parents=True)
    (folder / "bin").mkdir()
    for name, text in (
        ("sbatch", SBATCH),
        ("squeue", SQUEUE),
        ("scancel", SCANCEL),
        ("srun", SRUN),
        ("scontrol", SCONTROL),
    ):
        (folder / "bin" / name).write_text(text)
        (folder / "bin" / name).chmod(0o755)
    path = os.pathsep.join([str(folder / "bin"), str(Path(sys.executable).parent), os.environ["PATH"]])
    return {**os.environ, "PATH": path, "SLURM_STAND_IN": str(folder)}
