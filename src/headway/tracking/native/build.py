"""Building ``headway-runner``, the C++ tracker (``cpp/``: ``images``, ``files``, ``network``
and the tracking loop in ``headway_runner.cpp``), against the LibTorch that ships inside the
installed torch wheel.

The compiler is called directly with torch's own include and library paths
(:mod:`torch.utils.cpp_extension`): no CMake, no separate LibTorch download, and the binary
uses exactly the kernels the Python process uses. libjpeg and libpng are linked when their
headers are present (the runner then reads JPEG / PNG frames itself); without them it builds
and says, for a frame it cannot read, which package to install.

The binary is kept under ``$HEADWAY_CACHE/native`` (default ``~/.cache/headway/native``) in a
folder named by a hash of the source, the torch version and the flags, so an upgrade of either
rebuilds instead of running a stale binary; a build writes to a temporary name and renames, then
records the binary's size and SHA-256 (a damaged binary is never run: it is built again).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from headway.errors import InputError
from headway.io import (
    atomic_write_text,
    cache_root,
    discard_cached,
    locked_folder,
    manifest_matches,
    write_manifest,
)

SOURCE_DIR = Path(__file__).parent / "cpp"
# compiled side by side, then linked; images and files need no LibTorch (seconds), the other
# two do (tens of seconds each)
TRANSLATION_UNITS = ("network.cpp", "headway_runner.cpp", "images.cpp", "files.cpp")
BINARY_NAME = "headway-runner"
COMPILER_HINT = (
    "install a C++20 compiler (Debian/Ubuntu: apt install g++; for JPEG/PNG frames also "
    "libjpeg-dev libpng-dev), then run `headway runner build`"
)


@dataclass(frozen=True)
class BuildPlan:
    """Everything the compile command depends on."""

    compiler: str
    flags: tuple[str, ...]
    libraries: tuple[str, ...]
    image_formats: tuple[str, ...]

    @property
    def key(self) -> str:
        digest = _source_digest()
        digest.update(f"{torch.__version__}|{self.compiler}|{self.flags}|{self.libraries}".encode())
        return digest.hexdigest()[:16]


def _source_digest() -> Any:
    """SHA-256 over every source and header of the runner, by name and content."""
    digest = hashlib.sha256()
    for path in sorted(SOURCE_DIR.glob("*")):
        if path.suffix in (".cpp", ".h"):
            digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest


def native_cache_dir() -> Path:
    return cache_root() / "native"


def find_compiler() -> str | None:
    """``$CXX``, else the first of c++, g++, clang++ on PATH."""
    candidates = [os.environ["CXX"]] if os.environ.get("CXX") else ["c++", "g++", "clang++"]
    for name in candidates:
        found = shutil.which(name)
        if found:
            return found
    return None


def _links(compiler: str, header: str, library: str) -> bool:
    """Whether a program including ``header`` and linking ``-l<library>`` builds."""
    with tempfile.TemporaryDirectory() as folder:
        source = Path(folder) / "probe.cpp"
        source.write_text(f"#include <cstdio>\n#include <{header}>\nint main() {{ return 0; }}\n")
        probe = subprocess.run(
            [compiler, str(source), "-o", str(Path(folder) / "probe"), f"-l{library}"],
            capture_output=True,
        )
        return probe.returncode == 0


def build_plan(compiler: str | None = None) -> BuildPlan:
    """The compile command for this machine, or an error saying what is missing. Made once
    per compiler in a process: its probes compile two programs, and every check of a C++
    executor asks for the plan."""
    named = os.environ.get("CXX")
    compiler = compiler or find_compiler()
    if compiler is None and named:
        raise InputError(
            f"headway-runner cannot be built: CXX names {named!r}, which is not a program "
            f"on PATH; set CXX to a C++ compiler or unset it to use c++, g++ or clang++"
        )
    if compiler is None:
        raise InputError(f"headway-runner cannot be built: no C++ compiler found; {COMPILER_HINT}")
    return _plan_for(compiler)


@functools.lru_cache(maxsize=8)
def _plan_for(compiler: str) -> BuildPlan:
    from torch.utils.cpp_extension import include_paths, library_paths

    lib_dir = library_paths()[0]
    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    # torch's headers as system headers: -Wall -Wextra speak of headway's own files only
    flags = ["-O2", "-std=c++20", f"-D_GLIBCXX_USE_CXX11_ABI={abi}", "-Wall", "-Wextra"]
    flags += [f"-isystem{path}" for path in include_paths()]
    torch_libs = ["torch", "torch_cpu", "c10"]
    # CUDA wheels: link the CUDA parts too (not "as needed"), so their kernels register
    torch_libs += [
        n for n in ("torch_cuda", "c10_cuda") if (Path(lib_dir) / f"lib{n}.so").is_file()
    ]
    libraries = [f"-L{lib_dir}", "-Wl,--no-as-needed", *(f"-l{n}" for n in torch_libs)]
    # the CUDA libraries' own dependencies (cudart, cuBLAS… from the nvidia-* wheels) are found
    # at run time through their RUNPATH; the link need not resolve them
    libraries += ["-Wl,--as-needed", f"-Wl,-rpath,{lib_dir}", "-Wl,--allow-shlib-undefined"]
    libraries += ["-lpthread"]
    formats = []
    for name, header, library in (("jpeg", "jpeglib.h", "jpeg"), ("png", "png.h", "png")):
        if _links(compiler, header, library):
            flags.append(f"-DHEADWAY_HAVE_{name.upper()}")
            libraries.append(f"-l{library}")
            formats.append(name)
    return BuildPlan(compiler, tuple(flags), tuple(libraries), tuple(formats))


def runner_path(plan: BuildPlan) -> Path:
    """Where the runner for ``plan`` is (or would be) cached."""
    return native_cache_dir() / plan.key / BINARY_NAME


def _origin() -> dict[str, str]:
    """What a binary must have been built from to be used: this source and this torch."""
    return {"source": _source_digest().hexdigest(), "torch": torch.__version__}


def _verified(path: Path) -> bool:
    return manifest_matches(path) and os.access(path, os.X_OK)


def built_runner(plan: BuildPlan | None = None) -> Path | None:
    """The runner binary for this source and torch, if it has been built and is the file the
    build wrote (size and SHA-256 as its manifest records; a garbled, truncated or replaced
    binary is not the runner). Without a compiler (the plan cannot be made) a runner built
    earlier from this source and torch is still found and used."""
    try:
        plan = plan or build_plan()
    except InputError:
        return prebuilt_runner()
    path = runner_path(plan)
    return path if _verified(path) else None


def prebuilt_runner() -> Path | None:
    """A verified runner in the cache built from this source and torch, whichever compiler
    built it (for machines where the compiler has gone since)."""
    origin = _origin()
    for binary in sorted(native_cache_dir().glob(f"*/{BINARY_NAME}")):
        try:
            built_from = json.loads((binary.parent / ORIGIN_NAME).read_text())
        except (OSError, ValueError):
            continue
        if built_from == origin and _verified(binary):
            return binary
    return None


ORIGIN_NAME = "origin.json"


def build_runner(force: bool = False) -> Path:
    """Build the runner (about 35 s on 2 cores) unless this source and torch already have a
    verified one; a damaged cached binary is built again."""
    plan = build_plan()
    binary = runner_path(plan)
    folder = binary.parent
    if built_runner(plan) is not None and not force:
        return binary
    with locked_folder(folder, wait=True):
        if built_runner(plan) is not None and not force:  # built by another process meanwhile
            return binary
        discard_cached(binary)
        temporary = folder / f".{BINARY_NAME}.building"
        _compile_and_link(plan, folder, temporary)
        os.replace(temporary, binary)
        atomic_write_text(folder / ORIGIN_NAME, json.dumps(_origin()))
        write_manifest(binary)  # last: a binary without a matching manifest is never run
    return binary


def _compile_and_link(plan: BuildPlan, folder: Path, binary: Path) -> None:
    """Every translation unit compiled at once (one process each), then linked into
    ``binary``; build.log keeps the commands and what the compiler said (its warnings too)."""
    objects = [folder / f".{Path(name).stem}.o" for name in TRANSLATION_UNITS]
    commands = [
        [plan.compiler, *plan.flags, "-c", str(SOURCE_DIR / name), "-o", str(obj)]
        for name, obj in zip(TRANSLATION_UNITS, objects, strict=True)
    ]
    running = [
        subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for c in commands
    ]
    said = [process.communicate()[0] for process in running]
    log_lines = [f"{' '.join(c)}\n{out}" for c, out in zip(commands, said, strict=True)]
    failed = any(process.returncode != 0 for process in running)
    if not failed:
        link = [plan.compiler, *map(str, objects), "-o", str(binary), *plan.libraries]
        done = subprocess.run(link, capture_output=True, text=True)
        log_lines.append(f"{' '.join(link)}\n{done.stdout}{done.stderr}")
        failed = done.returncode != 0
    for obj in objects:
        obj.unlink(missing_ok=True)
    log = folder / "build.log"
    log.write_text("\n".join(log_lines))
    if failed:
        binary.unlink(missing_ok=True)
        text = "\n".join(log_lines)
        first = next((ln for ln in text.splitlines() if "error" in ln), "see the log")
        raise InputError(f"headway-runner did not build ({first.strip()}); full log: {log}")


def require_runner() -> Path:
    """The built runner, or an error that says how to get one."""
    try:
        plan = build_plan()
    except InputError as error:
        prebuilt = prebuilt_runner()
        if prebuilt is not None:
            return prebuilt
        raise InputError(f"executor needs the C++ runner: {error}") from None
    binary = built_runner(plan)
    if binary is None:
        raise InputError(runner_missing(plan))
    return binary


def runner_missing(plan: BuildPlan) -> str:
    """Why there is no runner to use: never built, or the cached file is damaged."""
    path = runner_path(plan)
    if path.exists():
        return (
            f"the cached C++ runner {path} is damaged (not the file its build wrote); run "
            "`headway runner build` to build it again"
        )
    return (
        "the C++ runner is not built for this torch yet: run `headway runner build` "
        "(about 35 s; `make setup` does it when a compiler is present)"
    )
