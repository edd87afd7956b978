"""`folder:PATH`: a user's own images, one sub-folder per class (PATH/cat/*.png, PATH/dog/*.png, ...).

Images are read with Pillow (already installed: Streamlit depends on it) or, without any image library, as
.npy arrays of shape (H, W) or (H, W, C) (loaded with allow_pickle=False). uint8 pixels are scaled to [0, 1].
Grayscale and colour images may be mixed: grayscale ones are repeated to three channels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["load_folder", "IMAGE_SUFFIXES"]

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


def _read_image(path: Path, size: int | None) -> np.ndarray:
    try:
        from PIL import Image
    except ImportError:
        raise ValueError(f"cannot read {path}: Pillow is not installed (pip install pillow, or use .npy)") from None
    with Image.open(path) as img:
        img = img.convert("L" if img.mode in ("1", "L", "LA", "I", "I;16", "F") else "RGB")
        if size is not None:
            img = img.resize((size, size), Image.BILINEAR)
        return np.asarray(img)


def _read_npy(path: Path, size: int | None) -> np.ndarray:
    a = np.load(path, allow_pickle=False)
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (1, 3, 4)):
        raise ValueError(f"shape {a.shape} is not (H, W) or (H, W, C) with C in 1, 3, 4")
    if size is not None and a.shape[:2] != (size, size):
        import torch
        import torch.nn.functional as F

        t = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
        t = t[None, None] if t.ndim == 2 else t.permute(2, 0, 1)[None]
        t = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False)[0]
        scaled = t[0].numpy() if a.ndim == 2 else t.permute(1, 2, 0).numpy()
        a = scaled.round().astype(a.dtype) if a.dtype == np.uint8 else scaled
    return a


def _to_chw(a: np.ndarray) -> np.ndarray:
    x = a.astype(np.float32) / 255.0 if a.dtype == np.uint8 else a.astype(np.float32)
    if x.ndim == 2:
        return x[None]
    return x[:, :, :3].transpose(2, 0, 1)  # drop alpha


def load_folder(root: str, image_size: int | None = None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(x float32 (N, C, H, W), y int64, class names sorted). Raises ValueError with a one-line message."""
    base = Path(root).expanduser()
    if not base.is_dir():
        raise ValueError(f"folder dataset {root!r}: not a directory")
    images: list[np.ndarray] = []
    labels: list[int] = []
    classes: list[str] = []
    for class_dir in sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = sorted(f for f in class_dir.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES | {".npy"})
        if not files:
            continue
        for f in files:
            try:
                a = _read_npy(f, image_size) if f.suffix.lower() == ".npy" else _read_image(f, image_size)
            except Exception as e:  # noqa: BLE001 - any unreadable file is a one-line user error
                raise ValueError(f"cannot read {f}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
            images.append(_to_chw(a))
            labels.append(len(classes))
        classes.append(class_dir.name)
    if len(classes) < 2:
        raise ValueError(f"folder dataset {root!r}: need at least two class folders holding images or .npy files")
    if len({im.shape[0] for im in images}) > 1:
        images = [np.repeat(im, 3, 0) if im.shape[0] == 1 else im for im in images]
    shapes = {im.shape for im in images}
    if len(shapes) > 1:
        a, b = sorted(shapes)[:2]
        raise ValueError(f"folder dataset {root!r}: images differ in size ({a} vs {b}); pass --image-size N")
    return np.stack(images), np.asarray(labels, dtype=np.int64), classes
