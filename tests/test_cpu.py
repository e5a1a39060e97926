"""The int8 capability probe: ORT's u8s8 kernels saturate on x86 CPUs without VNNI/AMX, and ORT INT8 then
says so once (bench, predict, deploy open it through ``bench.backends``)."""

from __future__ import annotations

import platform
import warnings

import pytest

from compressdet import _cpu


@pytest.mark.parametrize("flags, machine, expect", [
    ({"avx2", "fma"}, "x86_64", False),                 # the AVX2 EPYC CI ran on: saturating pairs
    ({"avx2", "avx512f", "avx512_vnni"}, "x86_64", True),
    ({"avx2", "avx_vnni"}, "x86_64", True),
    ({"avx2", "amx_int8"}, "x86_64", True),
    (set(), "x86_64", True),                            # no /proc/cpuinfo: no warning on a guess
    ({"asimd"}, "aarch64", True)])
def test_int8_dot_product(monkeypatch, flags, machine, expect):
    monkeypatch.setattr(_cpu, "cpu_flags", lambda: frozenset(flags))
    monkeypatch.setattr(platform, "machine", lambda: machine)
    assert _cpu.int8_dot_product() is expect


def test_ort_int8_warns_without_vnni(monkeypatch):
    from compressdet.bench import backends

    monkeypatch.setattr(_cpu, "int8_dot_product", lambda: False)
    with pytest.warns(RuntimeWarning, match="no VNNI/AMX int8 dot product"):
        backends._warn_int8_saturation()
    monkeypatch.setattr(_cpu, "int8_dot_product", lambda: True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        backends._warn_int8_saturation()


def test_this_machine_reads_its_flags():
    if platform.machine() == "x86_64":
        assert "sse2" in _cpu.cpu_flags()
