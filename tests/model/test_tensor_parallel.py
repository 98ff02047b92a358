"""The model's layout suits tensor parallelism: split by heads over 2 gloo processes, a block and the
whole model give the single-process outputs (torchrun, as a cluster launches it)."""

import json
import subprocess
import sys
from pathlib import Path

WORKER = Path(__file__).with_name("tensor_parallel_worker.py")


def test_colwise_and_rowwise_parallel_blocks_match_one_process(tmp_path):
    out = tmp_path / "differences.json"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    result = subprocess.run([*torchrun, str(WORKER), str(out)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    differences = json.loads(out.read_text())
    assert differences["local_q_features"] == 4 * 32 // 2  # each rank holds half the query heads
    assert differences["block"] < 1e-5 and differences["logits"] < 1e-5, differences
