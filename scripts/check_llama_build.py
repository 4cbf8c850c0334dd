"""Refuse a llama.cpp build that carries instructions newer than x86-64-v3.

llama-cpp-python compiles ggml from source. ggml's default (GGML_NATIVE) tunes the
build to the CPU flags the build machine advertises; a virtual machine may advertise
AVX-512 or AMX that it cannot run, and the next machine's CPU may differ, so such a
build dies with SIGILL on its first completion. `make install` builds with native
tuning off (LLAMA_CMAKE_ARGS in the Makefile) and runs this check afterwards; a build
that fails it (for example a wheel cached by an earlier, native build) is rebuilt.

Exit 0: portable (or llama_cpp not installed, or not x86_64: nothing to check).
Exit 1: AVX-512 / AMX instructions found; the offending libraries are printed.
Exit 2: objdump is missing (binutils), so nothing could be checked.
"""

from __future__ import annotations

import importlib.util
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path

# zmm registers and opmask operands are AVX-512 only; vpdp* are VNNI (AVX-512 or
# AVX-VNNI), beyond x86-64-v3; the tile instructions are AMX.
FORBIDDEN = re.compile(
    r"%zmm\d|\{%k[1-7]\}|\bvpdp(bu|ws)sds?\b"
    r"|\b(tdpb[su]{2}d|tdpbf16ps|ldtilecfg|tileloadd|tilestored)\b"
)


def ggml_libraries() -> list[Path]:
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or not spec.submodule_search_locations:
        return []
    found: list[Path] = []
    for location in spec.submodule_search_locations:
        found += sorted(Path(location).glob("lib/lib*.so*"))
    return found


def forbidden_instructions(library: Path) -> int:
    """How many disassembled lines of `library` use AVX-512 or AMX."""
    objdump = shutil.which("objdump")
    if objdump is None:
        raise FileNotFoundError("objdump")
    listing = subprocess.run(
        [objdump, "-d", "--no-show-raw-insn", str(library)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return sum(1 for line in listing.splitlines() if FORBIDDEN.search(line))


def main() -> int:
    if platform.machine() not in {"x86_64", "AMD64"}:
        return 0
    libraries = ggml_libraries()
    try:
        bad = {lib: n for lib in libraries if (n := forbidden_instructions(lib))}
    except FileNotFoundError:
        print("check_llama_build: objdump not found (apt-get install binutils)", file=sys.stderr)
        return 2
    for lib, count in bad.items():
        print(f"check_llama_build: {lib} has {count} AVX-512/AMX instruction(s)", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
