"""Cluster launch: an sbatch script that starts `mai train` under torchrun on every node of a Slurm job.

One task per node; torchrun on each starts one process per GPU and they meet at the first node
(c10d rendezvous on the job id). The script always passes --resume, so a requeued or resubmitted
job continues from the run's last checkpoint.
"""

import shlex
import subprocess
import sys
from pathlib import Path

from mai.config import RunConfig
from mai.errors import MaiError
from mai.run import RunDir, atomic_write_text


def slurm_script(
    run: RunDir, config: RunConfig, nodes: int, gpus_per_node: int, options: dict[str, str], port: int = 29500
) -> str:
    """The sbatch script's text; `options` are extra #SBATCH settings (partition, time, account)."""
    pc, world = config.parallel, nodes * gpus_per_node
    if pc.tp > gpus_per_node:
        raise MaiError(
            f"parallel.tp ({pc.tp}) exceeds --gpus-per-node ({gpus_per_node}); keep tensor parallelism within a node",
            parameter="parallel.tp",
        )
    pc.shard_degree(world, f"GPUs of {nodes} nodes × {gpus_per_node}")
    path = run.path.resolve()
    settings = {
        "job-name": f"mai-{path.name}",
        "nodes": str(nodes),
        "ntasks-per-node": "1",
        "gpus-per-node": str(gpus_per_node),
        "exclusive": "",
        "output": str(path / "launch" / "%j.log"),
        **options,
    }
    header = [f"#SBATCH --{key}" + (f"={value}" if value else "") for key, value in settings.items()]
    torchrun = [sys.executable, "-m", "torch.distributed.run"]
    return "\n".join(
        [
            "#!/bin/bash",
            f"# `mai train` on {nodes} node(s) × {gpus_per_node} GPU(s); written by `mai launch slurm`.",
            *header,
            "set -euo pipefail",
            'head=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
            f"srun {shlex.join(torchrun)} \\",
            f'  --nnodes="$SLURM_NNODES" --nproc-per-node={gpus_per_node} \\',
            f'  --rdzv-id="$SLURM_JOB_ID" --rdzv-backend=c10d --rdzv-endpoint="$head:{port}" \\',
            f"  -m mai.cli train {shlex.quote(str(path))} --resume",
            "",
        ]
    )


def write_slurm_script(run: RunDir, text: str) -> Path:
    script = run.path / "launch" / "train.sbatch"
    script.parent.mkdir(exist_ok=True)
    atomic_write_text(script, text)
    script.chmod(0o755)
    return script


def submit(script: Path) -> str:
    """sbatch's answer ("Submitted batch job N")."""
    try:
        done = subprocess.run(["sbatch", str(script)], capture_output=True, text=True)
    except FileNotFoundError:
        raise MaiError(
            f"sbatch is not on PATH; run this on the cluster's login node, or submit {script} there yourself"
        ) from None
    if done.returncode != 0:
        raise MaiError(f"sbatch refused {script}: {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout.strip()
