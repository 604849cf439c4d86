"""Image geometry of the official YOLOv7 pipeline: long-side resize, letterbox, rectangular batch shapes.

The formulas (rounding, padding split, batch shapes) are the official ones, so a model sees the same input
size and padding as in the official ``test.py``; pixels are resized by Pillow instead of OpenCV, so they
differ by interpolation detail only.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image


def _resize(image: np.ndarray, width: int, height: int, resample: int) -> np.ndarray:
    return np.asarray(Image.fromarray(image).resize((width, height), resample))


def resize_long_side(image: np.ndarray, img_size: int) -> np.ndarray:
    """The official ``load_image`` step: scale so the long side is ``img_size`` (sizes truncated, as there).

    Shrinking uses Pillow's BOX filter (the counterpart of OpenCV's INTER_AREA the official code uses), enlarging
    BILINEAR (INTER_LINEAR).
    """
    h0, w0 = image.shape[:2]
    r = img_size / max(h0, w0)
    if r == 1:
        return image
    w, h = max(1, int(w0 * r)), max(1, int(h0 * r))
    return _resize(image, w, h, Image.BOX if r < 1 else Image.BILINEAR)


def letterbox(image: np.ndarray, new_shape: int | tuple[int, int], color: int | tuple[int, int, int] = 114,
              auto: bool = False, scaleup: bool = True,
              stride: int = 32) -> tuple[np.ndarray, float, tuple[float, float]]:
    """Resize keeping the aspect ratio and pad to ``new_shape`` (h, w), as the official ``letterbox``.

    Args:
        image: (H, W, 3) uint8.
        new_shape: target (h, w), or one int for a square.
        color: padding value (one for all channels, or RGB).
        auto: pad only to the next multiple of ``stride`` (minimum rectangle) instead of to ``new_shape``.
        scaleup: allow enlarging (the official test protocol does not).

    Returns:
        The image, the gain (new / old, same for both axes) and the padding ``(pad_w, pad_h)`` added on the
        left and top, as floats (halves of the total padding; the official split puts the odd pixel at
        the bottom/right: ``top = round(dh - 0.1)``, ``bottom = round(dh + 0.1)``).
    """
    h0, w0 = image.shape[:2]
    if isinstance(new_shape, int):
        new_shape = (new_shape, new_shape)
    r = min(new_shape[0] / h0, new_shape[1] / w0)
    if not scaleup:
        r = min(r, 1.0)
    w, h = int(round(w0 * r)), int(round(h0 * r))
    dw, dh = new_shape[1] - w, new_shape[0] - h
    if auto:
        dw, dh = dw % stride, dh % stride
    dw, dh = dw / 2, dh / 2
    if (w, h) != (w0, h0):
        image = _resize(image, w, h, Image.BILINEAR)
    top, bottom = int(round(dh - 0.1)), int(round(dh + 0.1))
    left, right = int(round(dw - 0.1)), int(round(dw + 0.1))
    out = np.empty((h + top + bottom, w + left + right, image.shape[2]), np.uint8)
    out[...] = np.asarray(color, np.uint8)
    out[top:top + h, left:left + w] = image
    return out, r, (dw, dh)


def rect_batch_shapes(shapes: np.ndarray, batch_size: int, img_size: int, stride: int = 32,
                      pad: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """The official rectangular-inference batching.

    Images are sorted by aspect ratio (h / w), cut into consecutive batches, and each batch gets the smallest
    shape, in multiples of ``stride`` plus ``pad`` strides, that holds all its images at ``img_size``:
    ``ceil(img_size * s / stride + pad) * stride``.

    Args:
        shapes: (n, 2) image sizes as (h, w) (original or resized: only the ratios matter).

    Returns:
        ``order``: (n,) image indices in batch order (batch ``b`` is ``order[b*batch_size:(b+1)*batch_size]``),
        and ``batch_shapes``: (n_batches, 2) int (h, w).
    """
    shapes = np.asarray(shapes, np.float64).reshape(-1, 2)
    n = len(shapes)
    if n == 0:
        return np.zeros(0, np.int64), np.zeros((0, 2), np.int64)
    ar = shapes[:, 0] / shapes[:, 1]
    order = np.argsort(ar, kind="stable")  # stable: ties keep dataset order, so batches are reproducible
    ar = ar[order]
    nb = math.ceil(n / batch_size)
    rel = np.ones((nb, 2))
    for b in range(nb):
        ari = ar[b * batch_size:(b + 1) * batch_size]
        lo, hi = ari.min(), ari.max()
        if hi < 1:  # all wide: full width, height of the tallest
            rel[b] = [hi, 1]
        elif lo > 1:  # all tall: full height, width of the widest
            rel[b] = [1, 1 / lo]
    return order, (np.ceil(rel * img_size / stride + pad).astype(np.int64) * stride)
