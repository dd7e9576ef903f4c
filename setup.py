"""Build hook: generate the gRPC stubs from protos/ before building.

Everything else about the package is declared in pyproject.toml.  The stubs
are generated on every build (wheel, sdist and `pip install -e .`) and are
never committed.
"""

import importlib.util
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.egg_info import egg_info

_GEN = Path(__file__).resolve().parent / "scripts" / "gen_protos.py"


def _generate() -> None:
    spec = importlib.util.spec_from_file_location("gen_protos", _GEN)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.generate()


class BuildPyWithProtos(build_py):
    def run(self) -> None:
        _generate()
        super().run()


class EggInfoWithProtos(egg_info):
    def run(self) -> None:
        _generate()
        super().run()


setup(cmdclass={"build_py": BuildPyWithProtos, "egg_info": EggInfoWithProtos})
