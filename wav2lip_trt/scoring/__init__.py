"""Scoring what was made: LSE-D / LSE-C, Wav2Lip's lip-sync expert and its quality discriminator.

Public API (imported on first use, so ``import wav2lip_trt.scoring`` stays light)::

    from wav2lip_trt.scoring import ScoreOptions, score_video
    report = score_video(ScoreOptions(video=Path("clip.mp4"), syncnet_checkpoint=Path("syncnet_v2.model"),
                                      crops=True))
    report.to_json()["lse"]          # av_offset, min_dist (LSE-D), confidence (LSE-C), ...

    from wav2lip_trt.scoring import OnlineScorer, load_expert   # score generated faces as they are made
    scorer = OnlineScorer(load_expert("lipsync_expert.pth"))
    scorer.add(indices, pred, mel_chunks); scorer.report()

Modules: ``lse`` (LSE computation), ``media`` (upstream decoding and MFCC), ``expert`` (window layout,
loss), ``online`` (streaming scorer), ``tracking`` (face tracks), ``score`` (the ``score`` command's
function), ``command`` (its CLI), ``networks`` (the towers over runners of any backend). The networks
themselves live with the others (``wav2lip_trt.models.syncnet``), load through the one loader
(``wav2lip_trt.checkpoints``) and export and build through ``wav2lip_trt.build_engines``; the names
above are re-exported here.
"""

from __future__ import annotations

from ..lazy import lazy_exports


_EXPORTS = {
    "ScoreOptions": "score",
    "ScoreReport": "score",
    "score_video": "score",
    "OnlineScorer": "online",
    "LseResult": "lse",
    "lse_scores": "lse",
    "TrackOptions": "tracking",
    "SyncNetColor": "..models",
    "SyncNetV2": "..models",
    "load_expert": "..checkpoints",
    "load_syncnet_v2": "..checkpoints",
    "load_disc_qual": "..checkpoints",
    "write_random_scoring_checkpoints": "..random_weights",
}
__all__ = list(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
