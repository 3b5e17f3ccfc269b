"""HTTP gateway of AI Spine."""

__version__ = "0.1.0"
