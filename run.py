#!/usr/bin/env python3
"""Install the platform into .venv and run it, with nothing but Python 3.11+.

    python3 run.py          install (first time), then start everything on this machine
    python3 run.py test     install (first time), then run the whole test suite
    python3 run.py engine   install (first time), then prepare the local engine (vLLM on CPU, two models)
    python3 run.py install  install (or update) only

Any further arguments go to the command (for `test`, to pytest).
"""

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = Path(os.environ.get("MARKETPLACE_VENV") or ROOT / ".venv")


def main() -> None:
    if sys.version_info < (3, 11):  # noqa: UP036 (this file runs under any python3 to say so)
        sys.exit(f"Python 3.11 or newer is needed; this is {sys.version.split()[0]}.")
    python = VENV / "bin" / "python"
    if not python.exists():
        print(f"Creating a virtual environment in {VENV.name}/ ...", flush=True)
        venv.create(VENV, with_pip=True)
    # Reinstall whenever the declared dependencies change.
    stamp = VENV / ".marketplace-installed"
    wanted = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if not stamp.exists() or stamp.read_text() != wanted:
        print("Installing the platform and its dependencies (a minute or two the first time) ...", flush=True)
        subprocess.check_call([python, "-m", "pip", "install", "-q", "--upgrade", "pip"])
        subprocess.check_call([python, "-m", "pip", "install", "-q", "-e", f"{ROOT}[dev]"])
        stamp.write_text(wanted)
    os.chdir(ROOT)
    # Replace this process with the installed platform, so signals (Ctrl-C) reach it directly.
    os.execv(  # noqa: S606
        python, [str(python), "-m", "marketplace.launcher", *(sys.argv[1:] or ["up"])]
    )


if __name__ == "__main__":
    main()
