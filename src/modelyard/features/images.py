"""Images to network input: float32 (N, C, H, W) scaled to [0, 1], the shape fixed at fit."""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.exceptions import NotFittedError

from modelyard.config import SchemaSettings
from modelyard.data.images import IMAGE_COLUMNS, as_image_layout, frame_images
from modelyard.errors import ModelyardError
from modelyard.features.rows import OnePredictionPerRow


class ImagePreprocessor(OnePredictionPerRow):
    """Learns the image shape (H, W, C) and the value scale (255 for 0..255 pixels, 1 for
    pixels already in 0..1) from the training images; `transform` takes an `image_frame` or
    an array of images in any layout `as_image_layout` reads."""

    def input_columns(self, schema: SchemaSettings) -> list[str]:
        return list(IMAGE_COLUMNS)

    def fit(self, frame: pd.DataFrame, y: np.ndarray | None = None) -> ImagePreprocessor:
        images = frame_images(frame)
        self.image_shape_ = tuple(int(v) for v in images.shape[1:])
        self.scale_ = 255.0 if images.size and float(images.max()) > 1.0 else 1.0
        return self

    @property
    def input_shape_(self) -> tuple[int, int, int]:
        """The network's per-image input shape (C, H, W)."""
        height, width, channels = self.image_shape_
        return channels, height, width

    def transform(self, images: pd.DataFrame | np.ndarray) -> np.ndarray:
        if not hasattr(self, "image_shape_"):
            raise NotFittedError("ImagePreprocessor is not fitted yet; call fit(training_frame) first")
        array = frame_images(images) if isinstance(images, pd.DataFrame) else as_image_layout(images)
        if tuple(array.shape[1:]) != self.image_shape_:
            raise ModelyardError(
                f"the images are shaped {tuple(array.shape[1:])} (H, W, C); the model takes {self.image_shape_}",
                "resize the images to the size the model was trained on",
            )
        scaled = array.astype(np.float32) / np.float32(self.scale_)
        return np.ascontiguousarray(scaled.transpose(0, 3, 1, 2))
