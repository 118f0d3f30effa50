"""Decoding one uploaded image to the dataset's input shape, deterministically.

Policy (documented in README "Data format"):
1. Formats PNG, JPEG, GIF (first frame), WebP, BMP and TIFF (first page); anything else
   is "not an image". A photo's EXIF orientation is applied (phones store portraits
   sideways with an orientation tag).
2. The header's size is checked before any pixel is decoded: more than
   `max_image_pixels` is refused (decompression-bomb guard), whatever Pillow allows.
3. Colour: channels 1 -> 8-bit grey (ITU-R 601-2 luma, Pillow's "L"); channels 3 ->
   RGB. 16-bit grey is scaled to 8 bits (v // 257). Alpha is premultiplied, i.e.
   transparent pixels become black. Palette images are expanded first.
4. Size: if it differs from the target, the largest centred box with the target's
   aspect ratio is cut out and resized to (width, height) with Pillow's antialiased
   bilinear filter. JPEGs are first decoded at the smallest DCT scale that stays
   at least as large as the target (Pillow's draft mode), which is both faster and
   deterministic. Identical bytes always give identical pixels (same Pillow).
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

FORMATS = ("PNG", "JPEG", "GIF", "WEBP", "BMP", "TIFF")
_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"RIFF", "WebP"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
)
_OTHER = (  # what people put in image folders that is not one of FORMATS
    (b"%PDF", "a PDF document"),
    (b"PK\x03\x04", "a zip archive"),
    (b"\x1f\x8b", "a gzip file"),
    (b"8BPS", "a Photoshop document"),
    (b"\x00\x00\x01\x00", "an ICO icon"),
    (b"\x00\x00\x00\x0cjP  ", "a JPEG 2000 image"),
    (b"\xff\x4f\xff\x51", "a JPEG 2000 image"),
    (b"qoif", "a QOI image"),
)
_FTYP = {  # ISO media files: the brand after 'ftyp'
    **dict.fromkeys((b"heic", b"heix", b"mif1", b"hevc"), "a HEIC photo"),
    b"avif": "an AVIF image",
    **dict.fromkeys((b"isom", b"mp42"), "an MP4 video"),
    b"qt  ": "a QuickTime video",
}
EXIF_ORIENTATION = 0x0112


def what_is(data: bytes) -> str:
    """What a member that Pillow does not read as an image holds, for the skip reason
    (by its first bytes; nothing is decoded)."""
    if not data:
        return "an empty file"
    if data[4:8] == b"ftyp":
        return _FTYP.get(data[8:12], f"an ISO media file ({data[8:12].decode('latin-1')!r})")
    for magic, name in _OTHER:
        if data.startswith(magic):
            return name
    head = data[:1024].lstrip()
    if head[:5].lower() == b"<?xml" or b"<svg" in head.lower():
        return "an SVG drawing" if b"<svg" in head.lower() else "an XML file"
    if head[:1] == b"<":
        return "an HTML page" if b"html" in head[:64].lower() else "a markup file"
    try:
        text = data[:1024].decode("utf-8")
        if all(c.isprintable() or c in "\r\n\t" for c in text):
            return "a text file"
    except UnicodeDecodeError:
        pass
    return f"unknown data starting with {data[:8].hex(' ')}"


TRANSPOSED = (5, 6, 7, 8)  # orientations that swap width and height
_GREY_MODES = {"1", "L", "P", "LA", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "La", "RGBa"}
_WIDE_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N"}


class ImageSkip(Exception):
    """This file cannot become an item; the message is the reason shown to the uploader."""


def decode_image(data: bytes, shape: tuple[int, int, int], max_image_pixels: int) -> np.ndarray:
    """Bytes of one file -> (H, W, C) uint8, or ImageSkip with the reason."""
    height, width, channels = shape
    try:
        with Image.open(io.BytesIO(data), formats=FORMATS) as im:
            pixels = im.width * im.height
            if pixels > max_image_pixels:
                raise ImageSkip(
                    f"image too large: {im.width}x{im.height} = {pixels} pixels, "
                    f"the limit is {max_image_pixels}"
                )
            orientation = im.getexif().get(EXIF_ORIENTATION, 1)
            if im.format == "JPEG":  # the DCT scale for the target as it will stand after rotating
                size = (height, width) if orientation in TRANSPOSED else (width, height)
                im.draft("L" if channels == 1 else "RGB", size)
            im.seek(0)
            im.load()
            if orientation != 1:
                im = ImageOps.exif_transpose(im)
            return _to_array(im, shape)
    except ImageSkip:
        raise
    except UnidentifiedImageError:
        kind = next((name for magic, name in _SIGNATURES if data.startswith(magic)), None)
        if kind:  # the right signature but Pillow could not open it: a damaged file
            raise ImageSkip(f"unreadable image: a damaged {kind} file") from None
        found = what_is(data)
        hint = "; HEIC photos: export them as JPEG" if found.startswith("a HEIC") else ""
        expected = "PNG, JPEG, GIF, WebP, BMP or TIFF expected"
        raise ImageSkip(f"not an image: found {found}; {expected}{hint}") from None
    except Image.DecompressionBombError as exc:
        raise ImageSkip(f"image too large: {exc}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageSkip(f"unreadable image: {exc}") from None


def _to_array(im: Image.Image, shape: tuple[int, int, int]) -> np.ndarray:
    height, width, channels = shape
    im = _normalise_mode(im)
    if im.size != (width, height):
        im = im.resize((width, height), Image.Resampling.BILINEAR, box=_centre_box(im.size, (width, height)))
    im = im.convert("L" if channels == 1 else "RGB")
    arr = np.asarray(im, dtype=np.uint8)
    return arr.reshape(height, width, channels)


def _normalise_mode(im: Image.Image) -> Image.Image:
    """-> "L", "RGB", "LA" premultiplied to "L" or "RGBA" premultiplied to "RGB"."""
    mode = im.mode
    if mode in _WIDE_MODES:
        wide = np.asarray(im, dtype=np.int64)
        top = 65535 if wide.max(initial=0) > 255 or mode.startswith("I;16") else 255
        return Image.fromarray((wide.clip(0, top) * 255 // top).astype(np.uint8), "L")
    if mode not in _GREY_MODES:
        raise ImageSkip(f"wrong mode: {mode} images are not supported (8/16-bit grey, RGB, RGBA)")
    if mode in ("P", "PA"):
        im = im.convert("RGBA")
    elif mode == "1":
        im = im.convert("L")
    elif mode in ("CMYK", "YCbCr", "RGBX"):
        im = im.convert("RGB")
    if im.mode in ("RGBA", "LA", "La", "RGBa"):
        arr = np.asarray(im.convert("RGBA" if im.mode.startswith("RGB") else "LA"), dtype=np.uint16)
        alpha = arr[..., -1:]
        colour = (arr[..., :-1] * alpha + 127) // 255
        colour = colour.astype(np.uint8)
        return Image.fromarray(colour[..., 0] if colour.shape[-1] == 1 else colour)
    return im


def _centre_box(size: tuple[int, int], target: tuple[int, int]) -> tuple[float, float, float, float]:
    """Largest box of the target aspect ratio centred in `size` (source pixel units)."""
    w, h = size
    tw, th = target
    if w * th > h * tw:  # source wider than target: cut left and right
        bw, bh = h * tw / th, float(h)
    else:
        bw, bh = float(w), w * th / tw
    x0, y0 = (w - bw) / 2, (h - bh) / 2
    return (x0, y0, x0 + bw, y0 + bh)
