"""Every message type of AI Spine, grouped by area."""
