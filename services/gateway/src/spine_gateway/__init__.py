"""HTTP gateway of AI Spine."""
