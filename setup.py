"""Build steps that must be code: gRPC stubs from protos/ and the fastaudio extension."""

import os
from pathlib import Path

from setuptools import Command, Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.command.build_py import build_py

_ROOT = Path(__file__).parent.resolve()
_PROTO_ROOT = _ROOT / "protos"


class BuildPackageProtos(Command):
    """Generate *_pb2.py, *_pb2_grpc.py and *.pyi next to each .proto in protos/."""

    description = "generate Python gRPC stubs from protos/"
    user_options: list = []

    def initialize_options(self):
        pass

    def finalize_options(self):
        pass

    def run(self):
        # Imported here: grpcio-tools is a build requirement, not a runtime one.
        import grpc_tools
        from grpc_tools import protoc

        protos = sorted(str(p.relative_to(_PROTO_ROOT)) for p in _PROTO_ROOT.rglob("*.proto"))
        well_known = str(Path(grpc_tools.__file__).parent / "_proto")
        # -I protos makes the stubs import `speakstream.v1....`, mirroring the
        # proto package path, as every other language sees it.
        args = [
            "grpc_tools.protoc",
            f"-I{_PROTO_ROOT}",
            f"-I{well_known}",
            f"--python_out={_PROTO_ROOT}",
            f"--pyi_out={_PROTO_ROOT}",
            f"--grpc_python_out={_PROTO_ROOT}",
            *protos,
        ]
        if protoc.main(args) != 0:
            raise RuntimeError(f"protoc failed on {protos}")


class BuildPyWithProtos(build_py):
    """build_py that generates the stubs first (also runs for editable installs)."""

    def run(self):
        self.run_command("build_protos")
        super().run()


class BuildExtCythonize(build_ext):
    """Cythonize at build time, so Cython is needed only as a build requirement."""

    def finalize_options(self):
        from Cython.Build import cythonize

        debug = bool(os.environ.get("FASTAUDIO_DEBUG"))
        directives = {"language_level": "3", "linetrace": debug, "binding": debug}
        self.distribution.ext_modules = cythonize(
            self.distribution.ext_modules,
            compiler_directives=directives,
            annotate=debug,
        )
        super().finalize_options()


def _extensions():
    macros = [("CYTHON_TRACE_NOGIL", "1")] if os.environ.get("FASTAUDIO_DEBUG") else []
    return [
        Extension(
            "fastaudio._fastaudio",
            ["fastaudio/_fastaudio.pyx"],
            extra_compile_args=["-O3", "-Wall", "-Wno-unused-function"],
            define_macros=macros,
        )
    ]


setup(
    ext_modules=_extensions(),
    cmdclass={
        "build_protos": BuildPackageProtos,
        "build_py": BuildPyWithProtos,
        "build_ext": BuildExtCythonize,
    },
)
