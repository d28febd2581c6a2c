"""The ``index`` and ``sync`` sections: the bundle a device loads, NamUs ingest and fleet sync."""

from __future__ import annotations

from pydantic import Field

from namus_edge.core.cases import CASE_SETS, CaseSetCode
from namus_edge.core.config.base import StrictModel


class NamusApiConfig(StrictModel):
    """The (undocumented) NamUs JSON API used by `index build --source api`."""

    base_url: str = "https://www.namus.gov/api"
    user_agent: str = "namus-edge index builder (+https://github.com/namus-edge/namus-edge)"
    concurrency: int = Field(6, ge=1, le=16)
    timeout_s: float = Field(30.0, gt=0)
    retries: int = Field(4, ge=0, le=20)
    backoff_s: float = Field(1.0, gt=0)
    backoff_max_s: float = Field(60.0, gt=0, description="Cap on one retry delay (also on a server's Retry-After).")
    page_size: int = Field(
        2000, ge=1, le=10000, description="Search `take` per request; NamUs caps at 10000 and times out above ~2000."
    )
    states: list[str] | None = Field(None, description="Limit to these state names (default: all).")
    store_dir: str | None = Field(None, description="Resumable download store; default <service.state_dir>/namus-api.")




class IndexConfig(StrictModel):
    """Building and searching the NamUs bundle."""

    bundle: str | None = Field(None, description="Bundle directory the edge searches (e.g. <state>/index/current).")
    allow_unsigned: bool = Field(
        False, description="Development only: let `run` and `scan` search a bundle without a signature check when "
        "sync.pubkeys is empty (a loud warning is logged). Never in production."
    )
    valid_days: float = Field(
        30.0, gt=0, le=3650, description="`index build`: the signed valid_until is the build time plus this many "
        "days; devices report an expired bundle and sync refuses to install one."
    )
    case_sets: list[CaseSetCode] = Field(default_factory=lambda: list(CASE_SETS))
    categories: list[str] = Field(
        default_factory=lambda: ["FacialCaseId", "ActualPhoto", "AgeProgression", "Composite", "ArtistRendering"],
        description="Image categories run through the face detector.",
    )
    flat_max: int = Field(
        80_000, ge=1, description="Exact (flat) search up to this many vectors; beyond, a PQ fast scan of all "
        "vectors with an exact fp16 re-rank (bench/search.py)."
    )
    flat_fp16: bool = Field(True, description="Store flat vectors as fp16 (half the memory, same ranking).")
    search_threads: int = Field(
        1, ge=1, le=64, description="FAISS (OpenMP) threads while the edge searches; one face at a time is fastest "
        "on 1, and more threads contend with the models on a busy device (bench/search.py)."
    )
    thumbnails: bool = Field(True, description="Keep 20%-padded face thumbnails in the operator bundle.")
    thumbnail_px: int = Field(160, ge=32, le=1024)
    min_face_px: int = Field(20, ge=1, description="Smallest face side accepted from a case photo.")
    center_margin: float = Field(
        0.8, gt=0, le=1, description="Several faces: a runner-up larger than this fraction of the chosen face "
        "marks the photo ambiguous."
    )
    workers: int = Field(2, ge=1, le=64)
    api: NamusApiConfig = Field(default_factory=NamusApiConfig)


class SyncConfig(StrictModel):
    """Fetching signed bundles onto the device."""

    url: str | None = Field(None, description="Base URL of a published bundle tree (…/latest.json lives there).")
    state_dir: str = Field("/var/lib/namus-edge/index", description="versions/<v>/ and the `current` symlink.")
    pubkeys: list[str] = Field(default_factory=list, description="Pinned operator Ed25519 public key files.")
    keep_versions: int = Field(3, ge=1, le=100)
    max_bytes: int = Field(2_000_000_000, ge=1, description="Refuse bundles larger than this.")
    timeout_s: float = Field(30.0, gt=0)
    interval_s: float = Field(3600.0, gt=0, description="Timer period (systemd timer), informative.")
    on_announce: bool = Field(True, description="The running service syncs when an MQTT announcement arrives.")
