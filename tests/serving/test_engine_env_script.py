"""serving/local/engine_env.py also runs as a script inside the engine's own environment (it converts the
chat model there), where none of the platform's packages can be imported."""

import subprocess
import sys
from pathlib import Path

import serving.local.engine_env as engine_env


def test_the_engine_script_runs_without_the_platform_importable() -> None:
    # The base interpreter in isolated mode: no project on sys.path, no site-packages of this venv.
    base_python = Path(sys.base_prefix) / "bin" / "python3"
    result = subprocess.run(
        [str(base_python), "-I", engine_env.__file__, "--help"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "usage" in result.stdout
