"""Re-attaching a face to its track after a short occlusion, by embedding.

IoU cannot follow a face that was hidden for a moment (someone walked in front, the head
turned away) and reappears elsewhere in the frame: the tracker opens a new track and the
decision votes would start again from zero. Once the new track's first face is embedded, the
pipeline asks :func:`reattach`: if a track of the same camera that was *lost before the new
one appeared* (still open, so unseen for less than ``matching.track_max_age_s``) holds an
embedding with cosine >= ``matching.track_embed_sim`` to this face, the new track is folded into
it (:meth:`Tracker.absorb`): same track id, votes kept. The threshold defaults to 0.5, above the
match threshold (0.40 for EdgeFace-XS), because a wrong re-attachment mixes two people's votes.
Re-attachment needs the embedding, which the pipeline computes after tracking, so it happens
in the embedding step rather than inside :meth:`Tracker.update`.
"""

from __future__ import annotations

import numpy as np

from namus_edge.edge.tracker import Track, Tracker


def reattach(tracker: Tracker, track: Track, embedding: np.ndarray, min_cosine: float) -> Track:
    """Fold a brand-new track into the lost track it continues, if there is one.

    Args:
        tracker: the tracker that owns both tracks.
        track: the track the face was assigned to by IoU.
        embedding: float (D,) the face's embedding (finite; normalised here).
        min_cosine: ``matching.track_embed_sim``.

    Returns:
        The track the face belongs to now: the lost one it was folded into, or ``track``.
    """
    if track.faces:  # only a track that never held an embedded face can be a continuation
        return track
    v = np.asarray(embedding, dtype=np.float32).reshape(-1)
    norm = float(np.linalg.norm(v))
    if not np.isfinite(norm) or norm == 0.0:
        return track
    v = v / norm
    best: Track | None = None
    best_sim = min_cosine
    for old in tracker.tracks(track.camera_id):
        emb = old.embedding
        if old is track or emb is None or emb.shape != v.shape or old.last_seen >= track.first_seen:
            continue  # itself, never embedded, or visible at the same time as the new face
        sim = float(emb @ v)
        if sim >= best_sim:
            best, best_sim = old, sim
    if best is None:
        return track
    tracker.absorb(track, into=best)
    return best
