"""The one small inference-backend interface every model runs through.

A backend owns one loaded model and runs it on named float32 inputs. onnxruntime (CPU, CUDA
or TensorRT execution providers) and native TensorRT engines implement it; model classes
(detector, embedder, age) only see this interface.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class TensorInfo:
    """Name, shape and dtype of a graph input or output; dynamic axes are ``None``."""

    name: str
    shape: tuple[int | None, ...]
    dtype: str


class Backend(abc.ABC):
    """A loaded model that maps named input arrays to a list of output arrays."""

    #: What actually executes the model, e.g. "onnxruntime:CPUExecutionProvider".
    engine: str

    @property
    @abc.abstractmethod
    def inputs(self) -> list[TensorInfo]:
        """Graph inputs in declaration order."""

    @property
    @abc.abstractmethod
    def outputs(self) -> list[TensorInfo]:
        """Graph outputs in declaration order."""

    @abc.abstractmethod
    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Run one forward pass.

        Args:
            feeds: input name -> array (float32, NCHW for image inputs).

        Returns:
            Output arrays in the order of :attr:`outputs`.
        """

    def warmup(self, shapes: dict[str, tuple[int, ...]], runs: int = 1) -> None:
        """Run ``runs`` forward passes on zeros of the given input shapes (first-frame latency)."""
        feeds = {name: np.zeros(shape, dtype=np.float32) for name, shape in shapes.items()}
        for _ in range(runs):
            self.run(feeds)

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release device memory; the default does nothing."""
