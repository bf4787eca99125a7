"""Live lip-sync: an avatar prepared once, audio fed in chunks, frames out as soon as they are final.

Shaped like a streaming recogniser (feed, what is final so far, finish) over explicit buffers:

- :mod:`.mel`: the mel windows of audio that arrives in pieces, bit-identical to the whole file's;
- :mod:`.avatar`: a face video or image prepared once (frames, boxes, 96x96 faces), on disk;
- :mod:`.stream`: a session's generator over an avatar, fed audio, handing out frames with clocks
  and bounded queues;
- :mod:`.stats`: what a stream did (drops, gaps, latency, batches), in flat memory;
- :mod:`.command`: the ``avatar`` and ``stream`` commands.
"""
