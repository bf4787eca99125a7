"""One face, many audios, one command: dubbing one speaker video into several languages.

The models load once and the face is detected once (the session's detection memo; the disk cache
too); each output equals a separate run with that audio.

A problem with one audio's own files -- its ``--audio`` input missing, not a file, undecodable or too
short (:class:`AudioError`), or its output file unwritable (:class:`OutfileError`) -- fails that
output only. Every other error (a checkpoint, the face input, an option, ffmpeg) would hit every
audio alike and stops the run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from .errors import AudioError, InputError, OutfileError
from .options import InferenceOptions
from .session import InferenceResult, Session, prepare_job

AUDIO_FIELD = "{audio}"
DEFAULT_SUFFIX = ".mp4"
OWN_PROBLEMS = (AudioError, OutfileError)
"""The errors about one audio's own files: they fail its output, and the other audios go on."""


def outfiles_for(outfile: Path, audios: Sequence[Path]) -> list[Path]:
    """Where each audio's video goes.

    One audio: ``outfile`` itself. Several: ``outfile`` with ``{audio}`` replaced by each audio's
    stem, or, when ``outfile`` is a folder (exists as one, or has no extension), ``DIR/<stem>.mp4``.
    """
    if len(audios) == 1:
        return [Path(outfile)]
    text = str(outfile)
    if AUDIO_FIELD in text:
        outs = [Path(text.replace(AUDIO_FIELD, Path(a).stem)) for a in audios]
    elif Path(outfile).is_dir() or Path(outfile).suffix == "":
        outs = [Path(outfile) / f"{Path(a).stem}{DEFAULT_SUFFIX}" for a in audios]
    else:
        raise InputError(f"--outfile {outfile}: with {len(audios)} --audio files give a folder or a name containing "
                         f"{AUDIO_FIELD} (e.g. out/{AUDIO_FIELD}.mp4)")
    seen: dict[Path, Path] = {}
    for audio, out in zip(audios, outs):
        if out in seen:
            raise InputError(f"--audio {seen[out]} and {audio} would both write {out}: rename one, or use {AUDIO_FIELD} "
                             "in a name that tells them apart")
        seen[out] = Path(audio)
    return outs


@dataclass(frozen=True)
class AudioOutcome:
    audio: Path
    outfile: Path
    result: InferenceResult | None
    error: str | None  # the one-line message of a failed output


def run_many(options: InferenceOptions, audios: Sequence[Path], *, session: Session | None = None,
             progress: Callable[[InferenceOptions], dict] | None = None) -> Iterator[AudioOutcome]:
    """Lip-sync ``options.face`` to each audio in turn, yielding each outcome as it completes.

    Each audio is prepared and run on its own: an error in :data:`OWN_PROBLEMS` (its audio, its
    output file) is its outcome, any other error stops the run. ``progress(options)`` may return
    the ``on_start``/``on_frame``/``on_phase`` callbacks for that run.
    """
    outs = outfiles_for(options.outfile, audios)
    per_audio = [replace(options, audio=Path(a), outfile=o) for a, o in zip(audios, outs)]
    own = session is None
    opened = None
    try:
        for opts in per_audio:
            try:
                job = prepare_job(opts)
                if opened is None and own:
                    opened = Session.for_options(opts, generator_batch=job.plan.generator_batch)
                active = session if session is not None else opened
                assert active is not None
                result = active.execute(job, **(progress(opts) if progress is not None else {}))
            except OWN_PROBLEMS as exc:
                yield AudioOutcome(opts.audio, opts.outfile, None, str(exc))
                continue
            yield AudioOutcome(opts.audio, opts.outfile, result, None)
    finally:
        if opened is not None:
            opened.close()
