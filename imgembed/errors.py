"""The exceptions imgembed raises. Each message is one line that says what to do next."""


class ImgembedError(Exception):
    """Base class: everything imgembed raises on purpose."""


class ImageLoadError(ImgembedError):
    """A file could not be read as an image (corrupt, unsupported, too large)."""


class ModelError(ImgembedError):
    """A backbone, weights file or checkpoint cannot be used."""


class WeightsUnavailableError(ModelError):
    """Pretrained weights would have to be downloaded and cannot be."""


class IndexFileError(ImgembedError):
    """Base class for problems with an index directory."""


class IndexNotFoundError(IndexFileError):
    """The directory holds no imgembed index."""


class IndexCorruptError(IndexFileError):
    """A file of the index is damaged, truncated or inconsistent with the others."""


class IndexVersionError(IndexFileError):
    """The index was written by a newer imgembed."""


class ModelMismatchError(IndexFileError):
    """The index was built with another model than the one asked for."""


class NoLabelsError(IndexFileError):
    """Classification needs labelled images and the index has none."""


class InputError(ImgembedError):
    """A folder or query path given by the user does not exist or cannot be used."""


class IndexLockedError(IndexFileError):
    """Another process is writing to the index."""


class RemovalRefusedError(ImgembedError):
    """A run would remove all or most of a folder's indexed images (an empty or unmounted
    folder looks exactly like that); nothing was changed."""


class EngineError(ImgembedError):
    """An embedding engine failed (a decode worker died, a Ray cluster), is not installed, or cannot be reached."""


class TorchUnavailableError(ModelError):
    """What was asked for needs torch (training, ``--runtime torch``, a model without an ONNX
    export), and this install has none."""


class RuntimeUnavailableError(ModelError):
    """The inference runtime asked for (ONNX Runtime) is not installed."""


class ExtraMissingError(ImgembedError):
    """What was asked for needs an optional extra (e.g. ``imgembed[map]``) that this install lacks."""
