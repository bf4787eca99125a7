"""``wav2lip-trt serve``: lip-sync as a long-running HTTP service with a web page.

The parts, each in its own module, in the order a request meets them:

- :mod:`.config`   what the server was started with, checked once (bind address, token, limits);
- :mod:`.app`      the HTTP transport (FastAPI): routes, auth, error bodies; no lip-sync logic;
- :mod:`.uploads`  a request turned into a job: files stored under server-chosen names, probed by
                   content, options named and typed as in a jobs file (LitServe's ``decode_request``);
- :mod:`.service`  the jobs: queue bound, state, progress for the event streams, restart recovery;
- :mod:`.store`    job state in SQLite (WAL) under ``--state-dir``;
- :mod:`.pool`     worker processes, each holding one :class:`~wav2lip_trt.session.Session` loaded once
                   (LitServe's ``setup``); :mod:`.worker` is what runs inside one (``predict``);
- :mod:`.metrics`  the Prometheus text of ``/metrics``;
- :mod:`.command`  the click command.

Importing this package loads neither FastAPI nor torch.
"""
