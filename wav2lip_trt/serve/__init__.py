"""``wav2lip-trt serve``: lip-sync as a long-running HTTP service with a web page.

The parts, each in its own module, in the order a request meets them:

- :mod:`.config`   what the server was started with, checked once (bind address, token, limits);
- :mod:`.app`      the HTTP transport (FastAPI): routes, auth, error bodies; no lip-sync logic;
- :mod:`.uploads`  a request turned into a job: files stored under server-chosen names, probed by
                   content, options named and typed as in a jobs file (LitServe's ``decode_request``);
- :mod:`.service`  the jobs: queue bound, state, progress for the event streams, restart recovery;
- :mod:`.avatars`  avatars prepared once and avatar jobs, on the same queue and store;
- :mod:`.live`     the avatar routes and ``WS /v1/live``; :mod:`.channel` is a live session's pipe to
                   its worker;
- :mod:`.store`    job and avatar state in SQLite (WAL) under ``--state-dir``;
- :mod:`.pool`     worker processes, each holding one :class:`~wav2lip_trt.session.Session` loaded once
                   (LitServe's ``setup``); :mod:`.worker` is what runs inside one (``predict``),
                   :mod:`.worker_tasks` its avatar, avatar-job and live tasks (:mod:`.tasks`);
- :mod:`.metrics`  the Prometheus text of ``/metrics``;
- :mod:`.command`  the click command.

Importing this package loads neither FastAPI nor torch.
"""
