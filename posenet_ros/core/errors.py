"""Every exception posenet_ros raises on purpose, each with a message that says what to do.

All derive from :class:`PoseNetError` so callers (CLI, node) can catch one type, print the
message and exit non-zero. Modules add new error types here, never elsewhere.
"""

from __future__ import annotations


class PoseNetError(Exception):
    """Base class of all posenet_ros errors."""


# --- configuration ---------------------------------------------------------------------------
class ConfigError(PoseNetError, ValueError):
    """A configuration value, flag or YAML file is invalid."""


class UnknownBackboneError(ConfigError):
    """The requested backbone name is not one of the supported ones."""

    def __init__(self, name: str, known):
        super().__init__(f'unknown backbone {name!r}; choose one of: {", ".join(sorted(known))}')
        self.name = name


class DeviceUnavailableError(ConfigError):
    """The requested torch device cannot be used on this machine."""


class WeightsUnavailableError(PoseNetError):
    """ImageNet weights were requested but cannot be obtained offline."""


# --- geometry --------------------------------------------------------------------------------
class InvalidPoseError(PoseNetError, ValueError):
    """A pose, quaternion or transform is malformed (zero/non-finite quaternion, wrong shape)."""


# --- transforms (TF) -------------------------------------------------------------------------
class TransformLookupError(PoseNetError, LookupError):
    """Unknown or unconnected frames, or a TF tree with a cycle or a frame with two parents."""


class ExtrapolationError(PoseNetError, LookupError):
    """A transform is wanted at a time outside its data, or inside a gap longer than max_gap."""


# --- model files -----------------------------------------------------------------------------
class ModelFileError(PoseNetError):
    """Base class for problems with an exported model file."""


class ModelNotFoundError(ModelFileError, FileNotFoundError):
    """The model file does not exist."""


class CorruptModelError(ModelFileError):
    """The model file exists but cannot be loaded (truncated, not a model, wrong format)."""


class IncompatibleModelError(ModelFileError):
    """The model file loads but its metadata is missing or from an unsupported format version."""


# --- frames / images -------------------------------------------------------------------------
class InvalidFrameError(PoseNetError, ValueError):
    """An input frame has the wrong shape, dtype or size."""


class ImageConversionError(InvalidFrameError):
    """A ROS image message cannot be converted (encoding, step, truncated or undecodable data)."""


class NonFiniteOutputError(PoseNetError):
    """The model produced NaN/inf or a degenerate quaternion for a frame."""


# --- datasets --------------------------------------------------------------------------------
class DatasetError(PoseNetError):
    """A dataset cannot be read; the message names the file (and line) at fault."""


class LabelFormatError(DatasetError):
    """A label line is malformed."""

    def __init__(self, path, line_no: int, reason: str):
        super().__init__(f'{path}:{line_no}: {reason}')
        self.path = path
        self.line_no = line_no


class EmptySplitError(DatasetError):
    """A requested split contains no samples."""


class BagError(DatasetError):
    """A rosbag2 cannot be used (missing/corrupt, unknown topics, no poses)."""


# --- training --------------------------------------------------------------------------------
class CheckpointError(PoseNetError):
    """A checkpoint is missing, corrupt or does not match the configuration."""


class TrainingDivergedError(PoseNetError):
    """The training loss became NaN/inf; the message says what to change and where to resume."""


# --- structure from motion -------------------------------------------------------------------
class SfMError(PoseNetError):
    """Structure from motion failed or its output cannot be used as training labels."""


class SfMFormatError(SfMError, DatasetError):
    """A COLMAP or NVM reconstruction is missing or malformed; the message names the file."""


class SfMReconstructionError(SfMError):
    """SfM failed or registered too few frames; the message says what to try."""


class AlignmentError(SfMError, ValueError):
    """A similarity alignment is impossible (too few, degenerate or unmatched references)."""


# --- evaluation ------------------------------------------------------------------------------
class EvaluationError(PoseNetError):
    """An evaluation, replay or study cannot run (bad inputs, missing topics, no output)."""


class TrajectoryFormatError(EvaluationError, ValueError):
    """A TUM trajectory file is malformed; the message names the file and line."""


# --- scene maps (geometric verification) -----------------------------------------------------
class MapError(PoseNetError):
    """A scene map (``posenet-ros map``) cannot be built, read or used."""


class MapNotFoundError(MapError, FileNotFoundError):
    """The map file does not exist."""


class CorruptMapError(MapError):
    """The map file exists but cannot be read (truncated, not a map, missing arrays)."""


class IncompatibleMapError(MapError):
    """The map file is from an unsupported format version or feature type."""


class MapMismatchError(MapError):
    """The map was built for another model (model id) than the one it is used with."""


class MissingIntrinsicsError(MapError):
    """Frames have no camera intrinsics; the message says how to supply them."""


class MapBuildError(MapError):
    """Mapping failed (no frames, too few matches or triangulated points); says what to try."""
