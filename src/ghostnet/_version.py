"""The package version, on the ground floor so that any layer (the downloader's User-Agent) may read it."""
__version__ = "0.1.0"
