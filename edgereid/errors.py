"""Exceptions a user can act on: each names the input at fault and the fix."""
from __future__ import annotations


class EdgereidError(Exception):
    """Base class of every error edgereid raises on purpose."""


class InvalidInputError(EdgereidError, ValueError):
    """A crop or image that cannot be fed to the model (empty, wrong dtype, wrong channels)."""


class ImageReadError(EdgereidError, OSError):
    """A file that is missing or that OpenCV cannot decode as an image."""


class ModelFileError(EdgereidError, ValueError):
    """A model file that is missing, corrupt, of an unknown kind or lacks edgereid metadata."""


class ModelVersionError(ModelFileError):
    """A model or engine written by an incompatible edgereid, TensorRT or GPU."""


class MissingDependencyError(EdgereidError, ImportError):
    """An optional library is needed for this call; the message names the extra to install."""


class BackendUnavailableError(EdgereidError, RuntimeError):
    """The backend for this file cannot run on this machine (library or device absent)."""


class DatasetError(EdgereidError, ValueError):
    """A data set folder, list or table that is missing, empty or unparsable."""


class GalleryFileError(EdgereidError, ValueError):
    """A gallery file that is missing, truncated, corrupt, foreign or of an unsupported format version."""


class StoreLockedError(EdgereidError, TimeoutError):
    """Another connection held a GalleryStore's write lock for longer than the store's `timeout`."""


class WeightsDownloadError(EdgereidError, OSError):
    """A named weights file that could not be downloaded, or whose bytes do not match its published SHA-256;
    the message names the file, its URL and the exact path where to place a copy by hand."""
