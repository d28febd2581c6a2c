"""Exception hierarchy shared by every namus-edge package.

Each error names the file, field or value at fault; the CLI prints the message and exits
non-zero instead of a traceback.
"""

from __future__ import annotations


class NamusEdgeError(Exception):
    """Base of every error the CLI reports as a clean message."""


class ModelError(NamusEdgeError):
    """A model file is missing, corrupt, or does not match its declared contract."""


class ModelLoadError(ModelError):
    """A model could not be loaded by the selected backend/provider."""


class ImageReadError(NamusEdgeError):
    """An image file cannot be decoded (unreadable, empty, truncated, unsupported)."""


class BundleError(NamusEdgeError):
    """An index bundle is malformed or cannot be loaded."""


class BundleVerificationError(BundleError):
    """A bundle's signature, file hashes or embedding model do not verify."""
