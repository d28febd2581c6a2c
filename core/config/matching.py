"""The ``detection``, ``quality`` and ``matching`` sections: what is a face, a usable face and a match."""

from __future__ import annotations

from pydantic import Field, field_validator

from namus_edge.core.config.base import StrictModel

#: Default ``matching.target_fpir`` (per unknown face): the issue's bound of 0.5 % per unknown face, which the
#: policy then holds at every gallery size (55k included); the report half measures 0.19 % with it
#: (docs/accuracy.md section 6).
TARGET_FPIR_DEFAULT = 0.005


class DetectionConfig(StrictModel):
    """Face detector settings."""

    input_size: tuple[int, int] = Field(
        (640, 640), description="Detector input (width, height), multiples of 32; e.g. 640x384 for 16:9."
    )
    score_threshold: float = Field(0.5, ge=0.0, le=1.0, description="Minimum detector score.")
    nms_threshold: float = Field(0.4, gt=0.0, le=1.0, description="IoU above which NMS suppresses a box.")
    max_faces: int = Field(50, ge=1, le=1000, description="Keep at most this many faces per image (largest first).")
    pad_retry: bool = Field(
        True,
        description="Photos only (ingest, eval): when no face is found, retry on the photo inside a padded canvas "
        "(SCRFD misses faces filling > ~40% of the frame).",
    )
    pad_retry_score: float = Field(0.3, ge=0.0, le=1.0, description="Score threshold of the padded retry.")
    interval: int = Field(
        5, ge=1, le=30,
        description="Video: full-frame detection on every Nth frame per camera (1 = every frame); between full "
        "passes live tracks are re-detected in crops (roi_*) or carried by a motion model (edge/detect_schedule.py).",
    )
    roi_redetect: bool = Field(
        True, description="Between full passes, re-detect each live track in a crop of the full-resolution frame."
    )
    roi_scale: float = Field(2.0, ge=1.2, le=4.0, description="Crop side over the predicted box's larger side.")
    roi_input: int = Field(192, ge=64, le=640, description="Square detector input of a crop (multiple of 32).")
    roi_score_threshold: float = Field(
        0.3, ge=0.0, le=1.0,
        description="Score at which a live track is re-found in its crop (the quality gates still apply).",
    )
    roi_max_tracks: int = Field(
        8, ge=0, le=100,
        description="With more live tracks wanting faces than this, a frame between full passes gets a full pass "
        "instead of one crop per track (cheaper beyond ~8 crops on CPU).",
    )
    motion_trigger: float = Field(
        0.02, ge=0.0, le=1.0,
        description="Fraction of the frame outside live tracks that changed since the previous frame above which "
        "a full pass runs at once (new motion); 1 = never.",
    )
    verify_low: float | None = Field(
        None, ge=0.0, le=1.0,
        description="Small faces (video full passes, eval detect): faces the full pass scores in [verify_low, "
        "score_threshold) are re-detected in a full-resolution crop by models.verifier and kept when the combined "
        "evidence (verify_full_weight, verify_threshold) is enough; null = off, 0.2 = the fitted setting "
        "(docs/accuracy.md 2b).",
    )
    verify_scale: float = Field(
        3.0, ge=1.2, le=4.0,
        description="Verification crop side over the candidate box's larger side (detected at a roi_input square).",
    )
    verify_full_weight: float = Field(
        0.25, ge=0.0, le=1.0,
        description="Combined evidence of a borderline face = w * full-pass score + (1 - w) * crop score; this is w.",
    )
    verify_threshold: float = Field(
        0.375, ge=0.0, le=1.0,
        description="Combined evidence at which a borderline face is kept (it then carries that score).",
    )
    verify_flip: bool = Field(
        False, description="Crop score = mean over the crop and its mirror image (two verifier runs per face)."
    )
    tile_every: int = Field(
        0, ge=0, le=1000,
        description="Small faces: every Nth full pass per camera also detects on 2x2 full-resolution tiles "
        "(about 4 more detector runs); 0 = off.",
    )

    @field_validator("input_size")
    @classmethod
    def _multiple_of_32(cls, v: tuple[int, int]) -> tuple[int, int]:
        w, h = v
        if w <= 0 or h <= 0 or w % 32 or h % 32:
            raise ValueError(f"both sides must be positive multiples of 32, got {w}x{h}")
        return v

    @field_validator("roi_input")
    @classmethod
    def _roi_multiple_of_32(cls, v: int) -> int:
        if v % 32:
            raise ValueError(f"must be a multiple of 32, got {v}")
        return v


class QualityConfig(StrictModel):
    """Face quality gates and the weights of the single quality score."""

    min_face_area: float = Field(600.0, ge=0, description="Minimum bbox area in pixels (peers use 500-750).")
    min_det_score: float = Field(0.6, ge=0.0, le=1.0, description="Minimum detector confidence.")
    min_sharpness: float = Field(
        20.0, ge=0.0, description="Minimum variance of the Laplacian on the aligned 112x112 grey crop."
    )
    max_yaw_deg: float = Field(45.0, gt=0, le=90, description="Maximum |yaw| estimated from landmarks.")
    max_roll_deg: float = Field(35.0, gt=0, le=180, description="Maximum |roll| (eye line angle).")
    min_quality: float = Field(0.3, ge=0.0, le=1.0, description="Minimum combined quality score in [0, 1].")
    good_face_px: float = Field(112.0, gt=0, description="Face side (px) at which the size term saturates at 1.")
    good_sharpness: float = Field(150.0, gt=0, description="Laplacian variance at which the sharpness term saturates.")


class AgeCheckConfig(StrictModel):
    """Age plausibility: estimated age against the case's current age range."""

    enabled: bool = True
    tolerance_years: float = Field(8.0, ge=0, description="Base tolerance around the case's current age range.")
    child_extra_years: float = Field(
        6.0, ge=0, description="Extra tolerance when the person was a child (< 18) at last contact."
    )
    per_gap_year: float = Field(
        0.3, ge=0, description="Extra tolerance per year since last contact (older photos, wider window)."
    )
    max_tolerance_years: float = Field(25.0, ge=0, description="Upper bound of the total tolerance.")


class SexCheckConfig(StrictModel):
    """Sex plausibility: a confident sex estimate (``Face.p_male``) against the case's recorded sex."""

    enabled: bool = Field(True, description="Reject a case whose recorded sex a confident estimate contradicts "
                          "(no-op while no sex model fills Face.p_male).")
    min_confidence: float = Field(
        0.9965, ge=0.5, le=1.0, description="Estimates below this confidence, max(p_male, 1 - p_male), never reject. "
        "0.9965: the lowest gender-v1 confidence at which >= 99 % of adult faces were right (UTKFace dev set, "
        "SCRFD landmarks, docs/age.md); the licence-clean set's YuNet landmarks never reach 99 % below ~1.0."
    )
    min_age: float = Field(
        18.0, ge=0, le=120, description="Faces estimated younger than this are never rejected on sex: no "
        "confidence reached 99 % precision for children or teenagers (docs/age.md)."
    )


class StaticFaceConfig(StrictModel):
    """Static faces (flyers, posters): at most one event per still image region."""

    enabled: bool = True
    still_seconds: float = Field(
        20.0, gt=0, description="A face whose box stays within still_px for this long is static (a printed photo)."
    )
    still_px: float = Field(
        0.04, gt=0, le=1, description="Largest box movement, as a fraction of the face width, that still "
        "counts as still."
    )
    region_iou: float = Field(
        0.5, gt=0, le=1, description="A later match of the same case whose box overlaps a suppressed region by at "
        "least this IoU is the same region."
    )
    release_s: float = Field(
        10.0, gt=0, description="A suppressed region is released after no face was seen in it for this long."
    )


class MatchingConfig(StrictModel):
    """Decision rules from search results to a match event."""

    threshold: float | None = Field(
        None,
        ge=-1.0,
        le=1.0,
        description="Cosine similarity for a candidate match; null = the embedder's measured default "
        "(EdgeFace-XS 0.40, SFace 0.46: ~1e-5 false accepts per different-person pair, docs/accuracy.md). "
        "When set it overrides target_fpir.",
    )
    target_fpir: float | None = Field(
        TARGET_FPIR_DEFAULT,
        gt=0.0,
        lt=0.5,
        description="Alert policy: chance that a face of someone in no case gets a candidate; the threshold "
        "follows from the bundle's gallery size and the embedder's measured impostor tail (docs/accuracy.md). "
        "null = the embedder's fixed default threshold.",
    )
    min_threshold: float = Field(
        0.36, ge=-1.0, le=1.0, description="Floor of the threshold derived from target_fpir (small galleries: "
        "below 0.36 the per-pair false-accept rate on LFW rises above ~1e-4, docs/accuracy.md)."
    )
    hub_norm: bool = Field(
        True, description="Score each search hit as similarity minus the bundle face's hub offset (how strongly "
        "that photo attracts other people's faces, computed at build time) minus the searched face's own offset "
        "(the same measure against the bundle) and take the threshold from the "
        "embedder's normalised impostor tail. Applies only when the bundle carries offsets and the embedder has "
        "a normalised tail; otherwise raw similarity (docs/accuracy.md section 6)."
    )
    margin: float = Field(0.05, ge=0.0, le=2.0, description="Required lead of the best case over the second best.")
    top_k: int = Field(5, ge=1, le=100, description="Cases retrieved per face.")
    confirm_frames: int = Field(3, ge=1, le=1000, description="Frames of a track that must agree before an event.")
    cooldown_s: float = Field(300.0, ge=0, description="At most one event per (camera, case) in this window.")
    suppress_rejected_s: float = Field(
        7 * 86400.0, ge=0, le=365 * 86400,
        description="Longest suppression of a (camera, case) a reviewer's 'not a match' may ask for; 0 ignores them.",
    )
    track_max_age_s: float = Field(2.0, gt=0, description="A track unseen this long is closed.")
    track_iou: float = Field(0.3, ge=0, le=1, description="Minimum IoU to continue a track.")
    track_embed_sim: float = Field(
        0.5, ge=-1, le=1, description="Minimum cosine to re-attach a new track to a track lost within "
        "track_max_age_s (a short occlusion); above the match threshold, since a wrong re-attachment mixes votes."
    )
    faces_per_track: int = Field(5, ge=1, le=100, description="Best-quality faces kept per track for voting.")
    age_check: AgeCheckConfig = Field(default_factory=AgeCheckConfig)
    sex_check: SexCheckConfig = Field(default_factory=SexCheckConfig)
    static_faces: StaticFaceConfig = Field(default_factory=StaticFaceConfig)
