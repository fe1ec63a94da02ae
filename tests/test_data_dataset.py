"""`VQADataset` / `load_image`: every image mode becomes RGB, and no broken file raises."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from laser.data import VQADataset, VQASample, collate_samples, load_image


def save(image: Image.Image, path: Path, **kwargs) -> Path:
    image.save(path, **kwargs)
    return path


def pixel(image: Image.Image, xy: tuple[int, int]) -> tuple[int, int, int]:
    return tuple(int(v) for v in image.getpixel(xy))


def test_rgb_and_grey(tmp_path: Path) -> None:
    rgb, error = load_image(save(Image.new("RGB", (4, 3), (10, 20, 30)), tmp_path / "a.png"))
    assert error is None and rgb.mode == "RGB" and rgb.size == (4, 3) and pixel(rgb, (0, 0)) == (10, 20, 30)
    grey, _ = load_image(save(Image.new("L", (2, 2), 100), tmp_path / "l.png"))
    assert grey.mode == "RGB" and pixel(grey, (1, 1)) == (100, 100, 100)


def test_rgba_is_composited_on_white(tmp_path: Path) -> None:
    image = Image.new("RGBA", (3, 1))
    image.putpixel((0, 0), (255, 0, 0, 255))  # opaque red stays red
    image.putpixel((1, 0), (0, 0, 0, 0))  # fully transparent becomes white, not black
    image.putpixel((2, 0), (255, 0, 0, 128))  # half red: 255*(127/255) of white in G and B = 127
    rgb, error = load_image(save(image, tmp_path / "a.png"))
    assert error is None and rgb.mode == "RGB"
    assert pixel(rgb, (0, 0)) == (255, 0, 0)
    assert pixel(rgb, (1, 0)) == (255, 255, 255)
    r, g, b = pixel(rgb, (2, 0))
    assert r == 255 and abs(g - 127) <= 1 and abs(b - 127) <= 1


def test_palette_with_transparency_and_cmyk(tmp_path: Path) -> None:
    palette = Image.new("P", (2, 1))
    palette.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    palette.putpixel((0, 0), 0)
    palette.putpixel((1, 0), 1)
    rgb, _ = load_image(save(palette, tmp_path / "p.png", transparency=0))
    assert pixel(rgb, (0, 0)) == (255, 255, 255) and pixel(rgb, (1, 0)) == (0, 255, 0)
    cmyk = Image.new("CMYK", (2, 1), (0, 0, 0, 0))  # no ink: white
    cmyk.putpixel((1, 0), (0, 255, 255, 0))  # full magenta + yellow: red
    rgb, error = load_image(save(cmyk, tmp_path / "c.tif"))
    assert error is None and pixel(rgb, (0, 0)) == (255, 255, 255) and pixel(rgb, (1, 0)) == (255, 0, 0)


def test_16_bit_grey_is_rescaled_not_clipped(tmp_path: Path) -> None:
    values = np.array([[0, 25700, 65535]], dtype=np.uint16)  # 25700 / 257 = 100
    path = save(Image.fromarray(values), tmp_path / "deep.png")
    assert Image.open(path).mode.startswith("I")
    rgb, error = load_image(path)
    assert error is None and [pixel(rgb, (x, 0)) for x in range(3)] == [
        (0, 0, 0),
        (100, 100, 100),
        (255, 255, 255),
    ]


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    stored = Image.new("RGB", (40, 20), (0, 0, 255))
    stored.paste((255, 0, 0), (0, 0, 20, 20))  # left half red
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to display"
    rgb, error = load_image(save(stored, tmp_path / "phone.jpg", exif=exif, quality=95))
    assert error is None and rgb.size == (20, 40)
    # clockwise: the stored left half is now on top
    top, bottom = pixel(rgb, (10, 5)), pixel(rgb, (10, 35))
    assert top[0] > 200 and top[2] < 60 and bottom[2] > 200 and bottom[0] < 60


@pytest.mark.parametrize(
    ("make", "needle"),
    [
        (lambda p: p, "image not found"),
        (lambda p: (p.mkdir(), p)[1], "is a directory"),
        (lambda p: (p.write_bytes(b""), p)[1], "empty (0 bytes)"),
        (lambda p: (p.write_bytes(b"this is not an image at all"), p)[1], "UnidentifiedImageError"),
    ],
)
def test_broken_files_give_an_error_not_an_exception(tmp_path: Path, make, needle: str) -> None:
    path = make(tmp_path / "img.jpg")
    image, error = load_image(path)
    assert image is None and str(path) in error and needle in error


def test_truncated_jpeg_gives_an_error(tmp_path: Path) -> None:
    noise = np.random.default_rng(0).integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, format="JPEG")
    path = tmp_path / "cut.jpg"
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    image, error = load_image(path)
    assert image is None and error.startswith(f"cannot load image {path}: ")


def test_dataset_items_skip_ids_and_collate(tmp_path: Path) -> None:
    save(Image.new("RGB", (5, 5), (1, 2, 3)), tmp_path / "a.png")
    absolute = save(Image.new("RGB", (2, 2)), tmp_path / "elsewhere.png")
    samples = [
        VQASample("s1", "a.png", "What?", ["x"], meta={"k": 1}),
        VQASample("s2", "missing.png", "Which?", ["B"], choices=["red", "blue"]),
        VQASample("s3", str(absolute), "Abs?", ["y"]),
    ]
    dataset = VQADataset(samples, image_root=tmp_path, skip_ids={"s3"})
    assert len(dataset) == 2 and dataset.skipped == 1
    first, second = dataset[0], dataset[1]
    assert set(first) == {"sample_id", "question", "answers", "choices", "meta", "image", "error"}
    assert (
        first["sample_id"] == "s1" and first["error"] is None and pixel(first["image"], (0, 0)) == (1, 2, 3)
    )
    assert first["choices"] is None and first["meta"] == {"k": 1}
    assert second["image"] is None and str(tmp_path / "missing.png") in second["error"]
    assert second["question"].startswith("Which?\nA. red\nB. blue\n")
    full = VQADataset(samples, image_root=tmp_path / "nowhere")
    assert full[2]["error"] is None  # an absolute image path ignores the root
    batch = collate_samples([first, second])
    assert isinstance(batch, list) and [item["sample_id"] for item in batch] == ["s1", "s2"]
