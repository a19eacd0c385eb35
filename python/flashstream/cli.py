"""The ``flashstream`` command: ``info`` (build and kernel report), ``demo`` (the LLM streaming demo)
and ``demo-fsq`` (FSQ on video frames)."""

from __future__ import annotations

import argparse
import platform
import sys


def _info() -> int:
    import torch

    import flashstream
    from flashstream import _C

    cuda_avail = torch.cuda.is_available()
    print(f"flashstream {flashstream.__version__} (built from commit {_C.git_commit})")
    print(f"python      {platform.python_version()} ({sys.executable})")
    print(f"torch       {torch.__version__} (extension built against {_C.torch_version})")
    print(f"torch CUDA  {torch.version.cuda or 'none'}; GPU visible: "
          f"{torch.cuda.get_device_name() if cuda_avail else 'no'}")
    if _C.with_cuda:
        print(f"CUDA kernels: built with nvcc {_C.cuda_version} for archs {_C.cuda_archs}")
    else:
        print("CUDA kernels: not built (CPU torch or no nvcc; see the build log's 'flashstream:' line)")
    print(f"CPU kernels: ISAs compiled {_C.compiled_cpu_isas}; usable here {_C.available_cpu_isas()}; "
          f"active {_C.cpu_isa()}")
    print()
    ops = sorted(n for n in torch._C._dispatch_get_all_op_names() if n.startswith("flashstream::"))
    width = max(len(o) for o in ops) + 2
    print(f"{'op':<{width}}CPU  CUDA")
    for name in ops:
        cpu = torch._C._dispatch_has_kernel_for_dispatch_key(name, "CPU")
        cuda = torch._C._dispatch_has_kernel_for_dispatch_key(name, "CUDA")
        print(f"{name:<{width}}{'yes' if cpu else 'no':<5}{'yes' if cuda else 'no'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="flashstream", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="print versions, built archs and which ops have CPU/CUDA kernels")
    from flashstream import demo as fsq_demo
    from flashstream import demo_llm

    demo_llm.add_arguments(sub.add_parser(
        "demo", help="SmolLM2 streams a novel under full, window-only and sinks+window caches"))
    fsq_demo.add_arguments(sub.add_parser("demo-fsq", help="FSQ round trip on real video frames"))
    from flashstream.models.flashsvd import sweep as flashsvd_sweep
    flashsvd_sweep.add_arguments(sub.add_parser(
        "flashsvd", help="all-MiniLM-L6-v2 under truncated SVD: embedding cosine and peak memory per rank"))
    args = parser.parse_args(argv)
    if args.command == "info":
        return _info()
    if args.command == "demo":
        return demo_llm.run(args)
    if args.command == "flashsvd":
        return flashsvd_sweep.run(args)
    return fsq_demo.run(args)


if __name__ == "__main__":
    raise SystemExit(main())
