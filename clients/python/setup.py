"""Generate the client's protobuf modules from ../../proto as part of every build.

`pip install clients/python`, `pip wheel clients/python` and an sdist build all run this with
grpcio-tools installed (a build requirement in pyproject.toml), so nothing has to be done
first. Outside a checkout (building a wheel from the sdist) the protos are absent and the
modules the sdist carries are used as they are.
"""

import sys
from pathlib import Path

from setuptools import setup

HERE = Path(__file__).resolve().parent
PROTOS = HERE.parent.parent / "proto" / "registry" / "v1"
GEN = HERE / "src" / "registry_client" / "_gen" / "registry" / "v1"

DEPENDENCIES = [
    "grpcio>=1.66",
    "googleapis-common-protos>=1.63",
    "grpcio-status>=1.66",
    "pyjwt[crypto]>=2.9",
    # Progress of batch-verify on a terminal (rate, ETA).
    "tqdm>=4.66",
]
# The protobuf version that generated the modules, kept beside them for builds from the sdist.
GENERATOR = GEN / "PROTOBUF_VERSION"

if PROTOS.is_dir():
    sys.path.insert(0, str(HERE))
    from google.protobuf import __version__ as generator

    from generate import generate

    generate()
    GENERATOR.write_text(generator + "\n")
elif not (GEN / "citizen_pb2.py").exists():
    raise SystemExit(
        "registry_client: neither the protos (../../proto) nor generated modules are here; "
        "build from a checkout of the registry or from its sdist"
    )
# The generated modules refuse a protobuf runtime older than their generator at import.
major, minor = GENERATOR.read_text().strip().split(".")[:2]

setup(install_requires=[*DEPENDENCIES, f"protobuf>={major}.{minor}"])
