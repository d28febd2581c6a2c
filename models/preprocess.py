"""Turn uint8 BGR crops into the NCHW float32 tensor an input contract declares."""

from __future__ import annotations

import numpy as np

from namus_edge.models.registry import InputContract


def to_blob(crops_bgr: np.ndarray, contract: InputContract) -> np.ndarray:
    """Normalise a batch of crops for a model.

    Args:
        crops_bgr: uint8 (N, H, W, 3) BGR crops at the contract's size.
        contract: colour order and (pixel - mean) / std normalisation of the model.

    Returns:
        float32 (N, 3, H, W), contiguous.
    """
    if crops_bgr.ndim != 4 or crops_bgr.shape[-1] != 3:
        raise ValueError(f"crops must be (N, H, W, 3), got {crops_bgr.shape}")
    x = crops_bgr[..., ::-1] if contract.color == "RGB" else crops_bgr
    x = (x.astype(np.float32) - np.asarray(contract.mean, np.float32)) / np.asarray(contract.std, np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))
