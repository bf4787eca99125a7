"""Twenty clients at once against two workers: every client gets its own job's result, none mixed up."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np

from wav2lip_trt.samples import float_to_int16, speechlike_audio, write_wav

from jobs_media import write_media
from media import decode_frames
from serve_server import BOX, start_server, submit, wait_finished

CLIENTS = 20


def test_twenty_concurrent_clients_get_their_own_results(checkpoints, tmp_path) -> None:
    media = write_media(tmp_path / "media")
    audios = [write_wav(tmp_path / "media" / f"voice{i}.wav", float_to_int16(speechlike_audio(0.4 + 0.2 * i, seed=i)),
                        16000) for i in range(3)]
    server = start_server(tmp_path / "server", checkpoints, "--workers", "2", "--queue-size", str(CLIENTS))

    def client_run(index: int) -> tuple[int, dict, bytes]:
        with server.client() as client:
            created = submit(client, media["face"], audios[index % 3], box=BOX)
            assert created.status_code == 202, created.text
            end = wait_finished(client, created.json()["id"])
            video = client.get(end["result"]).content if end["status"] == "succeeded" else b""
            return index, end, video

    try:
        with ThreadPoolExecutor(CLIENTS) as pool:
            results = list(pool.map(client_run, range(CLIENTS)))
    finally:
        code = server.stop()
    assert code == 0, server.output()
    assert all(end["status"] == "succeeded" for _, end, _ in results), [end for _, end, _ in results]
    assert len({end["report"]["worker"] for _, end, _ in results}) == 2  # both workers took jobs
    by_audio: dict[int, list[np.ndarray]] = {}
    for index, end, video in results:
        path = tmp_path / f"result{index}.mp4"
        path.write_bytes(video)
        frames = decode_frames(path)
        assert frames.shape[0] == end["report"]["frames"]
        by_audio.setdefault(index % 3, []).append(frames)
    counts = [runs[0].shape[0] for _, runs in sorted(by_audio.items())]
    assert counts == sorted(counts) and len(set(counts)) == 3  # longer audio, more frames: no job got another's audio
    for runs in by_audio.values():  # the same inputs give the same frames, whichever worker ran them
        assert all(np.array_equal(runs[0], other) for other in runs[1:])
