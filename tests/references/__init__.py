"""Plain-PyTorch references for every op, in fp64 where it matters. Kernels are tested against these."""
