"""Loaders for real data that ships inside packages (read offline, nothing downloaded)."""

from .video import list_sample_videos, read_frames, video_info

__all__ = ["list_sample_videos", "read_frames", "video_info"]
