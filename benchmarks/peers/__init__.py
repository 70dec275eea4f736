"""Peer libraries and references the influence benchmark measures ours against."""
