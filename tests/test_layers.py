"""DESIGN.md's import rules hold: the contract in pyproject.toml (import-linter), and what importing
the serving app or the model actually loads."""

import json
import subprocess
import sys
from pathlib import Path

STAGES = ("mai.data", "mai.train", "mai.eval", "mai.serve", "mai.report", "mai.export", "mai.generate", "mai.stages")


def loaded_by(module: str) -> list[str]:
    """The mai modules a fresh interpreter has loaded after importing `module`."""
    code = f"import json, sys, {module}; print(json.dumps(sorted(m for m in sys.modules if m.startswith('mai'))))"
    return json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)


def test_the_import_contract_holds():
    lint_imports = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(lint_imports)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "1 kept, 0 broken" in result.stdout


def test_serving_loads_no_training_code():
    assert not [m for m in loaded_by("mai.serve.api") if m.startswith("mai.train")]


def test_the_model_loads_only_the_config():
    loaded = loaded_by("mai.model.transformer")
    assert not [m for m in loaded if m.startswith(STAGES)], loaded
    assert set(loaded) <= {
        "mai",
        "mai.model",
        "mai.model.transformer",
        "mai.config",
        "mai.errors",
        "mai.packages",
        "mai.precision",
    }
