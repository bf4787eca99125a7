"""The jobs file: JSONL and CSV give the same jobs; a malformed file is one InputError naming its line."""

from __future__ import annotations

from pathlib import Path

import pytest

from wav2lip_trt.errors import InputError
from wav2lip_trt.jobs.spec import MODEL_OPTIONS, check_paths, per_call_options, read_jobs
from wav2lip_trt.options import InferenceOptions
from wav2lip_trt.session import MODEL_OPTIONS as SESSION_MODEL_OPTIONS

from jobs_media import write_jsonl


def test_jsonl_and_csv_give_the_same_jobs(tmp_path) -> None:
    jsonl = write_jsonl(tmp_path / "jobs.jsonl", [
        {"face": "a.mp4", "audio": "a.wav", "outfile": "out/a.mp4", "box": [1, 50, 2, 60], "nosmooth": True,
         "fps": 30, "detect_size": None},
        "",
        "# a comment",
        {"face": "b.mp4", "audio": "b.wav", "outfile": "out/b.mp4", "pads": [0, 20, 0, 0], "crf": 23,
         "boxes": "b.boxes.json", "on_missing_face": "previous"},
    ])
    csv = tmp_path / "jobs.csv"
    csv.write_text("face,audio,outfile,box,nosmooth,fps,pads,crf,boxes,on_missing_face\n"
                   "a.mp4,a.wav,out/a.mp4,1 50 2 60,true,30,,,,\n"
                   "\n"
                   'b.mp4,b.wav,out/b.mp4,,,,"[0, 20, 0, 0]",23,b.boxes.json,previous\n')
    for jobs, lines in ((read_jobs(jsonl), (1, 4)), (read_jobs(csv), (2, 4))):
        assert [job.line for job in jobs] == list(lines)
        a, b = jobs
        assert (a.face, a.audio, a.outfile) == (Path("a.mp4"), Path("a.wav"), Path("out/a.mp4"))
        assert {k: v for k, v in a.options.items() if v is not None} == {"box": (1, 50, 2, 60), "nosmooth": True,
                                                                          "fps": 30.0}
        assert dict(b.options) == {"pads": (0, 20, 0, 0), "crf": 23, "boxes": Path("b.boxes.json"),
                                   "on_missing_face": "previous"}
    options = read_jobs(jsonl)[0].inference_options({"checkpoint_path": Path("w.pth"), "device": "cpu"})
    assert isinstance(options, InferenceOptions) and options.box == (1, 50, 2, 60) and options.device == "cpu"
    assert options.face == Path.cwd() / "a.mp4" and options.outfile.is_absolute()  # same file for any worker


def test_per_call_options_are_the_infer_options_that_keep_the_models() -> None:
    assert MODEL_OPTIONS == SESSION_MODEL_OPTIONS
    names = set(per_call_options())
    assert {"pads", "box", "nosmooth", "static", "crf", "boxes", "detect_every", "blend"} <= names
    assert not names & {*MODEL_OPTIONS, "face", "audio", "outfile", "cache_dir", "no_cache"}


@pytest.mark.parametrize("lines, problem", [
    (['{"face": "a.mp4", "audio": "a.wav", "outfile": "a_out.mp4"}', '{"face": "b.mp4", "audio": '],
     r"jobs.jsonl line 2: not valid JSON"),
    (['{"face": "a.mp4", "audio": "a.wav", "outfile": "o.mp4"}', "", '["a.mp4", "a.wav"]'],
     r"line 3: expected a JSON object"),
    (['{"face": "a.mp4", "audio": "a.wav"}'], r"line 1: missing outfile"),
    (['{"face": "a.mp4", "audio": "a.wav", "outfile": "o.mp4", "pad": [0, 1, 0, 0]}'], r"line 1: unknown option\(s\) pad;"),
    (['{"face": "a.mp4", "audio": "a.wav", "outfile": "o.mp4", "backend": "tensorrt"}'],
     r"line 1: backend: shared by every job, give it on the command line"),
    (['{"face": "a.mp4", "audio": "a.wav", "outfile": "o.mp4", "pads": [0, 20, 0]}'], r"line 1: pads: expected 4 whole"),
    (['{"face": "a.mp4", "audio": "a.wav", "outfile": "o.mp4", "nosmooth": "yes"}'], r"line 1: nosmooth: expected true"),
    (['{"face": "a.mp4", "audio": "a.wav", "outfile": "o.mp4", "crf": 18.5}'], r"line 1: crf: expected a whole number"),
    (['{"face": 3, "audio": "a.wav", "outfile": "o.mp4"}'], r"line 1: face: expected a path"),
    (['{"face": "a.mp4", "audio": "a.wav", "outfile": "o.mp4"}', '{"face": "a.mp4", "audio": "a.wav", '
      '"outfile": "o\\u0000b.mp4"}'], r"line 2: outfile: a path cannot hold a NUL character, got 'o\\x00b.mp4'"),
    (["", "# nothing but a comment"], r"holds no jobs"),
    (['{"face": "a.mp4", "audio": "a.wav", "outfile": "o.mp4"}', '{"face": ' + "[" * 50_000 + "]" * 50_000 + "}"],
     r"jobs.jsonl line 2: nested more than 32 levels deep"),
    (['{"face": "a.mp4", "audio": "a.wav", "outfile": "o.mp4", "crf": 1' + "0" * 5000 + "}"],
     r"jobs.jsonl line 1: the number 10000000000000000000\.\.\. \(5001 characters\) is too large"),
])
def test_malformed_jsonl_names_the_line(tmp_path, lines, problem) -> None:
    path = tmp_path / "jobs.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError, match=problem) as info:
        read_jobs(path)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("text, problem", [
    ("face,audio,outfile,box\na.mp4,a.wav,o.mp4,1 2 3\n", r"jobs.csv line 2: box: expected 4 whole numbers"),
    ("face,audio,outfile\na.mp4,a.wav,o.mp4\nb.mp4,b.wav\n", r"line 3: 2 fields, the header has 3"),
    ("face,audio,outfile,device\na.mp4,a.wav,o.mp4,cpu\n", r"line 1: device: shared by every job"),
    ("face,audio,outfile,rotate\na.mp4,a.wav,o.mp4,maybe\n", r"line 2: rotate: expected true or false"),
    ("face,audio,outfile\n\na.mp4,,o.mp4\n", r"line 3: missing audio"),
    ("face,face,outfile\n", r"line 1: the CSV header needs a distinct name"),
    ("face,audio,outfile,pads\na.mp4,a.wav,o.mp4," + "[" * 5000 + "\n", r"line 2: pads: expected 4 whole numbers"),
])
def test_malformed_csv_names_the_line(tmp_path, text, problem) -> None:
    path = tmp_path / "jobs.csv"
    path.write_text(text)
    with pytest.raises(InputError, match=problem):
        read_jobs(path)


def test_format_from_the_content_when_the_suffix_says_nothing(tmp_path) -> None:
    jsonl = write_jsonl(tmp_path / "jobs.txt", [{"face": "a.mp4", "audio": "a.wav", "outfile": "o.mp4"}])
    csv = tmp_path / "jobs.list"
    csv.write_text("face,audio,outfile\na.mp4,a.wav,o.mp4\n")
    assert read_jobs(jsonl)[0].outfile == read_jobs(csv)[0].outfile == Path("o.mp4")
    with pytest.raises(InputError, match="jobs file not found"):
        read_jobs(tmp_path / "missing.jsonl")


def checked(jobs_file: Path, *jobs: dict) -> None:
    """check_paths over ``jobs`` as the batch runs it (shared options filled in)."""
    write_jsonl(jobs_file, list(jobs))
    check_paths(jobs_file, [(job, job.inference_options({"checkpoint_path": Path("w.pth")}))
                            for job in read_jobs(jobs_file)])


@pytest.mark.parametrize("second, problem", [
    ({"outfile": "o/a.mp4"}, r"line 2's outfile o/a.mp4 is the same file as line 1's outfile o/a.mp4; give each"),
    ({"outfile": "o/sub/../a.mp4"}, r"line 2's outfile o/sub/../a.mp4 is the same file as line 1's outfile o/a.mp4"),
    ({"outfile": "o/missing/../a.mp4"}, r"line 2's outfile o/missing/../a.mp4 is the same file as line 1's outfile"),
    ({"outfile": "link/a.mp4"}, r"line 2's outfile link/a.mp4 is the same file as line 1's outfile o/a.mp4"),
    ({"outfile": "in/face.mp4"}, r"line 2's outfile in/face.mp4 is the same file as line 1's face in/face.mp4; "
                                 r"inputs are never overwritten"),
    ({"outfile": "in/../in/a.wav"}, r"line 2's outfile in/../in/a.wav is the same file as line 1's audio in/a.wav"),
    ({"outfile": "o/b.mp4", "save_frames": "o/frames"}, r"line 2's save_frames o/frames is the same file as line 1's "
                                                         r"save_frames o/frames"),
    ({"outfile": "o/b.mp4", "boxes": "o/a.mp4"}, r"line 1's outfile o/a.mp4 is the same file as line 2's boxes"),
    ({"outfile": "jobs.jsonl"}, r"line 2's outfile jobs.jsonl is the same file as the jobs file"),
])
def test_outputs_never_hit_an_input_or_each_other_whatever_the_spelling(tmp_path, monkeypatch, second,
                                                                        problem) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "in").mkdir()
    (tmp_path / "o" / "sub").mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "o")
    for name in ("face.mp4", "a.wav"):
        (tmp_path / "in" / name).write_bytes(b"x")
    first = {"face": "in/face.mp4", "audio": "in/a.wav", "outfile": "o/a.mp4", "save_frames": "o/frames"}
    with pytest.raises(InputError, match=problem) as info:
        checked(Path("jobs.jsonl"), first, {"face": "in/face.mp4", "audio": "in/a.wav", **second})
    assert str(info.value).startswith("jobs.jsonl: line ") and "\n" not in str(info.value)
    checked(Path("jobs.jsonl"), first, {"face": "in/face.mp4", "audio": "in/a.wav", "outfile": "o/sub/a.mp4"})


@pytest.mark.parametrize("home, given, problem", [
    (None, "~no-such-user-w2l/a.mp4", r"jobs.jsonl line 2: face ~no-such-user-w2l/a.mp4: cannot expand "
                                      r"~no-such-user-w2l: no user 'no-such-user-w2l' on this machine$"),
    ("file", "~/a.mp4", r"jobs.jsonl line 2: face ~/a.mp4: cannot expand ~: HOME is '.*home-file', not a folder$"),
    ("missing", "~/a.mp4", r"jobs.jsonl line 2: face ~/a.mp4: cannot expand ~: HOME is '.*missing', not a folder$"),
    ("", "~/a.mp4", r"jobs.jsonl line 2: face ~/a.mp4: cannot expand ~: HOME is '', not a folder$"),
    ("relative", "~/a.mp4", r"jobs.jsonl line 2: face ~/a.mp4: cannot expand ~: HOME is 'relative', not a folder$"),
])
def test_a_home_that_names_no_folder_is_refused_with_the_line(tmp_path, monkeypatch, home, given, problem) -> None:
    """A jobs file is not read by a shell: ``~`` is expanded here, and one that cannot be is the line's error.

    ``Path.expanduser`` raises RuntimeError for an unknown user (and for ``~`` with HOME unset and
    no password entry); HOME set to a file or nothing would make ``~/out.mp4`` some other path.
    """
    monkeypatch.chdir(tmp_path)
    (tmp_path / "relative").mkdir()
    (tmp_path / "home-file").write_bytes(b"x")
    if home is not None:
        monkeypatch.setenv("HOME", {"file": str(tmp_path / "home-file"), "missing": str(tmp_path / "missing")}
                           .get(home, home))
    jobs = write_jsonl(tmp_path / "jobs.jsonl", [{"face": "a.mp4", "audio": "a.wav", "outfile": "a_out.mp4"},
                                                 {"face": given, "audio": "b.wav", "outfile": "b_out.mp4"}])
    with pytest.raises(InputError, match=problem):
        read_jobs(jobs)


def test_a_home_folder_expands_for_every_path(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    jobs = write_jsonl(tmp_path / "jobs.jsonl", [{"face": "~/a.mp4", "audio": "~", "outfile": "o.mp4",
                                                  "boxes": "~/b.json"}])
    (job,) = read_jobs(jobs)
    assert job.face == Path("~/a.mp4")  # as written, for the messages
    options = job.inference_options({"checkpoint_path": Path("w.pth")})
    assert (options.face, options.audio, options.boxes) == (tmp_path / "a.mp4", tmp_path, tmp_path / "b.json")
