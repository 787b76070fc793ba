"""Compiles every Glimpse CUDA kernel file with NVRTC (through ctypes) for each given GPU
architecture with ptxas verbose output, and prints each kernel's registers, static shared memory,
stack frame and spill bytes. Exits non-zero on a compile error, an NVRTC warning, any spill, or
static shared memory above 48 KiB (the limit without an opt-in).

The portability header is handed to NVRTC as an in-memory header, as the CUDA backend will do at
start-up: NVRTC reads no files.

    python3 check.py LIBNVRTC KERNEL_DIR ARCH...
"""

import ctypes
import pathlib
import re
import sys

SHARED_LIMIT_BYTES = 48 * 1024
HEADER = "glimpse_cuda.cuh"


def nvrtc_library(path):
    lib = ctypes.CDLL(path)
    for name in ("nvrtcGetProgramLogSize", "nvrtcGetCUBINSize"):
        getattr(lib, name).argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_size_t)]
    lib.nvrtcGetErrorString.restype = ctypes.c_char_p
    return lib


def check(lib, status, what):
    if status != 0:
        raise RuntimeError(f"{what}: {lib.nvrtcGetErrorString(status).decode()}")


def compile_file(lib, source, name, header, arch):
    """Returns (ok, log) of compiling `source` to a CUBIN for `arch`."""
    program = ctypes.c_void_p()
    headers = (ctypes.c_char_p * 1)(header)
    names = (ctypes.c_char_p * 1)(HEADER.encode())
    check(lib, lib.nvrtcCreateProgram(ctypes.byref(program), source, name.encode(), 1, headers, names),
          f"{name}: nvrtcCreateProgram")
    options = [f"--gpu-architecture={arch}".encode(), b"--ptxas-options=-v", b"--std=c++17"]
    array = (ctypes.c_char_p * len(options))(*options)
    status = lib.nvrtcCompileProgram(program, len(options), array)
    size = ctypes.c_size_t()
    check(lib, lib.nvrtcGetProgramLogSize(program, ctypes.byref(size)), f"{name}: log size")
    log = ctypes.create_string_buffer(size.value)
    check(lib, lib.nvrtcGetProgramLog(program, log), f"{name}: log")
    ok = status == 0
    if ok:
        cubin = ctypes.c_size_t()
        check(lib, lib.nvrtcGetCUBINSize(program, ctypes.byref(cubin)), f"{name}: CUBIN size")
        ok = cubin.value > 0
    lib.nvrtcDestroyProgram(ctypes.byref(program))
    return ok, log.value.decode(errors="replace")


def kernel_reports(log):
    """Per entry function of a ptxas -v log: registers, smem, stack, spill stores, spill loads."""
    reports = {}
    current = None
    for line in log.splitlines():
        if m := re.search(r"Function properties for (\w+)", line):
            current = reports.setdefault(m.group(1), {"smem": 0})
        elif current is not None and (m := re.search(
                r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)):
            current["stack"], current["spill_stores"], current["spill_loads"] = map(int, m.groups())
        elif current is not None and (m := re.search(r"Used (\d+) registers", line)):
            current["registers"] = int(m.group(1))
            if s := re.search(r"(\d+) bytes smem", line):
                current["smem"] = int(s.group(1))
    return reports


def main():
    library, kernel_dir, *archs = sys.argv[1:]
    lib = nvrtc_library(library)
    major, minor = ctypes.c_int(), ctypes.c_int()
    check(lib, lib.nvrtcVersion(ctypes.byref(major), ctypes.byref(minor)), "nvrtcVersion")
    print(f"NVRTC {major.value}.{minor.value}")
    kernel_dir = pathlib.Path(kernel_dir)
    header = (kernel_dir / HEADER).read_bytes()
    failures = []
    rows = []
    for path in sorted(kernel_dir.glob("*.cu")):
        for arch in archs:
            ok, log = compile_file(lib, path.read_bytes(), path.name, header, arch)
            if not ok or "warning" in log:
                failures.append(f"{path.name} ({arch}):\n{log}")
                continue
            reports = kernel_reports(log)
            if not reports:
                failures.append(f"{path.name} ({arch}): no ptxas report in the log:\n{log}")
            for kernel, r in sorted(reports.items()):
                rows.append((kernel, arch, r))
                if r["spill_stores"] or r["spill_loads"]:
                    failures.append(f"{kernel} ({arch}) spills: {r}")
                if r["smem"] > SHARED_LIMIT_BYTES:
                    failures.append(f"{kernel} ({arch}) uses {r['smem']} bytes of static shared memory")
    print(f"{'kernel':<32} {'arch':<6} {'registers':>9} {'smem B':>7} {'stack B':>7} {'spill st/ld B':>13}")
    for kernel, arch, r in rows:
        spills = f"{r['spill_stores']}/{r['spill_loads']}"
        print(f"{kernel:<32} {arch:<6} {r['registers']:>9} {r['smem']:>7} {r['stack']:>7} {spills:>13}")
    for failure in failures:
        print(f"FAIL {failure}", file=sys.stderr)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
