"""WeChat 2013 protocol testbed: mock servers, client emulator, capture and verification."""

__version__ = "0.1.0"
