"""User-facing errors.

Everything a user can cause (a missing file, a corrupt checkpoint, a frame without a face, a
missing optional package) raises a subclass of :class:`Wav2LipTrtError`. The CLI prints such
errors as one ``Error: ...`` line and exits 1; any other exception is a bug and keeps its
traceback.
"""

from __future__ import annotations


class Wav2LipTrtError(Exception):
    """A problem the user can fix; the message says what happened and what to do."""


class InputError(Wav2LipTrtError):
    """An input file or option is unusable (missing, unreadable, inconsistent)."""


class CheckpointError(Wav2LipTrtError):
    """A checkpoint file is missing, corrupt, or holds the wrong model."""


class AudioError(InputError):
    """The audio is unusable: missing, not a file, undecodable, too short, or an unusable spectrogram.

    ``infer`` with several ``--audio`` files fails only that audio's output on it
    (:mod:`wav2lip_trt.many_audios`); every other error stops them all.
    """


class OutfileError(InputError):
    """A run's ``--outfile`` cannot be written there (a folder in the way, an input's path, no permission).

    Like :class:`AudioError`, with several ``--audio`` files it fails only that output.
    """


class NoFaceError(Wav2LipTrtError):
    """S3FD found no face in a frame and ``--on-missing-face error`` is in effect."""


class MissingDependencyError(Wav2LipTrtError):
    """An optional package is needed for the requested feature; the message names it."""


class EngineError(Wav2LipTrtError):
    """A TensorRT engine is missing, stale or was built for another GPU/version."""


class FFmpegError(Wav2LipTrtError):
    """ffmpeg failed while decoding or encoding; the message carries its last lines."""
