"""FileWallBall: a self-hosted file upload and management service."""

__version__ = "0.1.0"
