"""Compile the ``triton`` engine's kernels for NVIDIA GPUs on a machine without one (Triton's own ptxas),
with the launch configuration the engine would use, and report registers and spills per thread.

A thread that spills keeps part of its state in local memory, which a kernel that loops over T steps
pays for at every step. Exits 1 on a compile error or any spill.

    python scripts/triton_compile_check.py                      # sm_80 and sm_90, N = 32 ... 256
    python scripts/triton_compile_check.py --arch 90 --n 512 1024 --precision fp32 fp64
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.pop("TRITON_INTERPRET", None)  # compile for real, also when run from the tests
import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from nn4n.recurrence import ACTIVATIONS, triton as triton_engine  # noqa: E402

CUOBJDUMP = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
PRECISIONS = {"fp32": (torch.float32, "highest"), "tf32": (torch.float32, "high"), "fp64": (torch.float64, "highest")}


def resources(kernel: triton.JITFunction, dtype: torch.dtype, n: int, batch: int, steps: int,
              arch: int, flags: dict[str, object]) -> tuple[int, int]:
    """Registers and spilled bytes per thread of ``kernel`` compiled for ``sm_{arch}`` as the engine launches it."""
    launch = triton_engine._launch_args(dtype, n)
    warps = launch.pop("num_warps")
    constants = {**launch, "ACT": ACTIVATIONS.index("softplus"), **flags}  # softplus reads the most
    pointer = "*fp64" if dtype == torch.float64 else "*fp32"
    ints = {"B": batch, "T": steps, "N": n}
    signature, attrs = {}, {}
    for i, name in enumerate(kernel.arg_names):
        if name in constants:
            signature[name] = "constexpr"
            continue
        signature[name] = pointer if name.endswith("_ptr") else "i32"
        if name.endswith("_ptr") or ints[name] % 16 == 0:  # as Triton specializes a launch (aligned tensors)
            attrs[(i,)] = [["tt.divisibility", 16]]
    compiled = triton.compile(ASTSource(kernel, signature, constants, attrs), target=GPUTarget("cuda", arch, 32),
                              options={"num_warps": warps})
    with tempfile.NamedTemporaryFile(suffix=".cubin") as cubin:
        cubin.write(compiled.asm["cubin"])
        cubin.flush()
        usage = subprocess.run([str(CUOBJDUMP), "--dump-resource-usage", cubin.name],
                               capture_output=True, text=True, check=True).stdout
    return int(re.search(r"REG:(\d+)", usage)[1]), int(re.search(r"STACK:(\d+)", usage)[1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", type=int, nargs="+", default=[80, 90], help="compute capabilities (80: A100, 90: H100)")
    parser.add_argument("--n", type=int, nargs="+", default=[32, 64, 100, 256], help="neurons")
    parser.add_argument("--precision", nargs="+", choices=list(PRECISIONS), default=["fp32", "tf32"])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=100)
    args = parser.parse_args()
    kernels = {"forward": (triton_engine._forward_kernel, {"KEEP_V": True, "KEEP_Z": True, "HAS_KEEP": False}),
               "backward": (triton_engine._backward_kernel, {"HAS_GP": True}),
               "perturbed": (triton_engine._forward_kernel, {"KEEP_V": True, "KEEP_Z": False, "HAS_KEEP": True})}
    print(f"triton {triton.__version__}, batch {args.batch}, T {args.steps}")
    print(f"{'arch':>5} {'precision':>9} {'N':>5} {'warps':>5} {'kernel':>8} {'registers':>9} {'spilled B':>9}")
    spills = 0
    for arch in args.arch:
        for precision in args.precision:
            dtype, matmul = PRECISIONS[precision]
            torch.set_float32_matmul_precision(matmul)
            for n in args.n:
                for name, (kernel, flags) in kernels.items():
                    regs, spilled = resources(kernel, dtype, n, args.batch, args.steps, arch, flags)
                    spills += spilled > 0
                    warps = triton_engine._launch_args(dtype, n)["num_warps"]
                    print(f"sm_{arch:<2} {precision:>9} {n:>5} {warps:>5} {name:>8} {regs:>9} {spilled:>9}", flush=True)
    print("no spills" if not spills else f"{spills} kernels spill registers")
    return int(spills > 0)


if __name__ == "__main__":
    sys.exit(main())
