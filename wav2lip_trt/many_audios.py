"""One face, many audios, one command: dubbing one speaker video into several languages.

The models load once and the face is detected once (the session's detection memo; the disk cache
too); each output equals a separate run with that audio.

A problem with one audio's own files -- its ``--audio`` input missing, not a file, undecodable or too
short (:class:`AudioError`), or its output file unwritable (:class:`OutfileError`) -- fails that
output only. Every other error (a checkpoint, the face input, an option, ffmpeg) would hit every
audio alike and stops the run.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from .errors import AudioError, InputError, OutfileError
from .files import Named, check_separate, named
from .options import InferenceOptions
from .session import InferenceResult, Session, prepare_job

AUDIO_FIELD = "{audio}"
DEFAULT_SUFFIX = ".mp4"
OWN_PROBLEMS = (AudioError, OutfileError)
"""The errors about one audio's own files: they fail its output, and the other audios go on."""


def outfiles_for(outfile: Path, audios: Sequence[Path]) -> list[Path]:
    """Where each audio's video goes.

    One audio: ``outfile`` itself. Several: ``outfile`` with ``{audio}`` replaced by each audio's
    stem (see :func:`fill`), or, when ``outfile`` is a folder (exists as one, or has no extension),
    ``DIR/<stem>.mp4``.
    """
    if len(audios) == 1:
        return [Path(outfile)]
    if AUDIO_FIELD in str(outfile):
        return [fill(outfile, audio, "--outfile") for audio in audios]
    if Path(outfile).is_dir() or Path(outfile).suffix == "":
        return [Path(outfile) / f"{Path(a).stem}{DEFAULT_SUFFIX}" for a in audios]
    raise InputError(f"--outfile {outfile}: with {len(audios)} --audio files give a folder or a name containing "
                     f"{AUDIO_FIELD} (e.g. out/{AUDIO_FIELD}.mp4)")


def fill(template: Path, audio: Path, label: str) -> Path:
    """``template`` with ``{audio}`` replaced by ``audio``'s stem, which must stay inside the folder the template names.

    The stem fills part of one path component; a component it turns into ``.``, ``..`` or nothing
    (an audio named ``...wav`` has the stem ``..``), or splits with a separator, would write beside or
    above that folder: such an audio is refused, with the advice to rename it.
    """
    stem = Path(audio).stem
    separators = "".join(sep for sep in (os.sep, os.altsep) if sep)
    parts = re.split(f"([{re.escape(separators)}])", str(template))
    filled = [part.replace(AUDIO_FIELD, stem) for part in parts]
    for before, after in zip(parts, filled):
        if AUDIO_FIELD in before and (after in ("", ".", "..") or any(sep in after for sep in separators)):
            raise InputError(f"--audio {audio}: its name {stem!r} in {label} {template} would make the path "
                             f"component {after!r}, which is no name of its own (the output could land outside "
                             "that folder); rename the audio, or link it under another name")
    return Path("".join(filled))


def plan_runs(options: InferenceOptions, audios: Sequence[Path],
              extra_outputs: Mapping[str, Path | None] | None = None) -> list[InferenceOptions]:
    """The options of each audio's run, checked together before any runs: outputs never hit an input or each other.

    ``--save-frames``/``--dump-intermediates`` take ``{audio}`` as ``--outfile`` does; without it every
    run would write the same folder, which is refused like any other two outputs that are one file.
    ``extra_outputs`` are the command's own (``--json``), checked with the rest.
    """
    outs = outfiles_for(options.outfile, audios)
    runs = []
    for audio, out in zip(audios, outs):
        folders = {name: fill(value, audio, label) if value is not None and AUDIO_FIELD in str(value) else value
                   for name, label, value in (
                       ("save_frames", "--save-frames", options.save_frames),
                       ("dump_intermediates", "--dump-intermediates", options.dump_intermediates))}
        runs.append(replace(options, audio=Path(audio), outfile=out, **folders))
    inputs: list[Named] = []
    outputs: list[Named] = named(extra_outputs)
    for run in runs:
        run_inputs, run_outputs = run.paths()
        inputs += named(run_inputs)
        whose = f" (for --audio {run.audio})" if len(runs) > 1 else ""
        outputs += [(f"{name}{whose}", path) for name, path in named(run_outputs)]
    check_separate(outputs, inputs)
    return runs


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
    per_audio = plan_runs(options, audios)
    own = session is None
    opened = None
    try:
        for opts in per_audio:
            try:
                job = prepare_job(opts)
                if opened is None and own:
                    opened = Session.for_options(opts)
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
