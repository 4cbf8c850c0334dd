"""The llama.cpp reference server is built portably: no AVX-512 or AMX instructions.

A build tuned to the CPU flags the build machine advertises can die with SIGILL on a
virtual machine that advertises more than it runs (issue: a fresh machine's `make
test` lost four tests that way). `make install` builds with native tuning off; this
checks the installed libraries by disassembly, as scripts/check_llama_build.py does.
"""

import importlib.util
import platform
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
import check_llama_build  # noqa: E402


def test_the_check_recognises_avx512_and_amx_lines():
    forbidden = check_llama_build.FORBIDDEN
    assert forbidden.search("vfmadd231ps %zmm1,%zmm2,%zmm3")
    assert forbidden.search("vmovups %ymm0,(%rax){%k1}")
    assert forbidden.search("tdpbssd %tmm1,%tmm2,%tmm0")
    assert forbidden.search("ldtilecfg (%rdi)")
    assert not forbidden.search("vfmadd231ps %ymm1,%ymm2,%ymm3")
    assert forbidden.search("{vex} vpdpbusd %ymm1,%ymm2,%ymm3")  # AVX-VNNI


@pytest.mark.model
@pytest.mark.skipif(platform.machine() != "x86_64", reason="x86-64 instruction sets only")
@pytest.mark.skipif(shutil.which("objdump") is None, reason="objdump (binutils) not installed")
def test_installed_llama_cpp_has_no_avx512_or_amx_instructions():
    if importlib.util.find_spec("llama_cpp") is None:
        pytest.skip("llama_cpp is not installed")
    libraries = check_llama_build.ggml_libraries()
    assert any("ggml" in lib.name for lib in libraries), libraries
    offending = {
        lib.name: count
        for lib in libraries
        if (count := check_llama_build.forbidden_instructions(lib))
    }
    assert offending == {}, f"non-portable llama.cpp build: {offending}"
