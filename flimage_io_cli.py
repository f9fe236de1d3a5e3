"""The command line of flimage_io: ``python -m flimage_io demo | check | info | preview``.

It lives beside ``flimage_io.py`` so that the library a project vendors stays one small file;
copy both files to have the command line too. ``check`` reads each image through the library's
own readers (its private helpers), and adds only what the readers do not check.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import errno
import functools
import importlib
import math
import os
import re
import signal
import struct
import sys
import warnings
import zlib
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import h5py
import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    import flimage_io as fio
else:  # the library beside this file: installed, or vendored inside a package
    fio = importlib.import_module(f"{__package__}.flimage_io" if __package__ else "flimage_io")

__all__ = ["main"]


# 3x6 font: one octal digit per row (top to bottom), its value 4 = the left column; capitals and digits
# use the top five rows, lower case letters drop below the line into the sixth. Small enough to review by
# eye; legibility at larger tiles comes from integer scaling of the text, not from a bigger font.
_CHARS = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ .-_:=/#()+,?abcdefghijklmnopqrstuvwxyzµ!%'[];"
_CODES = (
    "75557 26227 71747 71317 55711 74717 74757 71111 75757 75717 25755 65656 34443 65556 74647 74644 34553 "
    "55755 72227 11152 55655 44447 57755 65555 25552 65644 25563 65655 34216 72222 55557 55552 55775 55255 "
    "55222 71247 00000 00002 00700 00007 02020 07070 11244 57575 24442 21112 02720 00024 71302 "
    "003530 446560 003430 113530 025630 347440 003536 446550 206270 101152 445650 622270 007750 006550 "
    "002520 006564 003531 005640 003260 227230 005530 005520 005770 005250 005536 007270 005564 "
    "22202 51245 22000 64446 31113 02024"
)
_FONT = {
    ch: np.array([[int(d, 8) >> (2 - c) & 1 for c in range(3)] for d in code.ljust(6, "0")], dtype=bool)
    for ch, code in zip(_CHARS, _CODES.split())
}
_BACKGROUND = 48  # dark gray for gaps and unused cell area, so tile edges show against black image content
_GAP = 2  # px between cells
_TILE = 256  # px: the longer side of a frame on a contact sheet
_SCALE = 2  # text at twice the font's size is readable on a 256 px tile
_LINE = 8 * _SCALE  # px: a line of text, with a margin of one font pixel above and below
_PERCENTILES = (0.5, 99.5)  # black and white: a few hot or dead pixels do not set the range
_RAMP = 64  # px: the gray ramp under the sheet, from black to white


def _png_chunk(tag: bytes, data: bytes) -> bytes:
    # The CRC covers the chunk type and data, not the length field.
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


def _png(pixels: npt.NDArray[np.uint8]) -> bytes:
    """Encode a non-empty 2-D uint8 array as an 8-bit grayscale PNG."""
    height, width = pixels.shape
    data = zlib.compress(np.pad(pixels, ((0, 0), (1, 0))).tobytes(), 6)  # a 0 before each row: filter None
    step = 1 << 20  # several IDAT chunks keep each chunk small; decoders concatenate them
    idat = b"".join(_png_chunk(b"IDAT", data[i : i + step]) for i in range(0, len(data), step))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit gray, deflate, no interlace
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + idat + _png_chunk(b"IEND", b"")


class _Frame(NamedTuple):
    """A frame reduced for a contact sheet as it is read, so that no full-size frame is kept."""

    means: npt.NDArray[np.float64]  # block means, at most _TILE px on the longer side; NaN: nothing finite
    up: int  # the integer enlargement of a small frame: its pixels stay square
    label: str
    metres: float | None  # per pixel of the tile, when the pixel size is known


def _reduce(raw: npt.NDArray[Any], meta: Mapping[str, Any], label: str) -> _Frame:
    """A raw frame as the block means of its ``down`` x ``down`` blocks, ``down`` the least that brings
    it to _TILE px or less; a strip of blocks at a time is converted to float64, never the frame."""
    down = max(1, -(-max(raw.shape) // _TILE))
    starts = np.arange(0, raw.shape[1], down)
    means = np.empty((len(range(0, raw.shape[0], down)), len(starts)))
    for row, top in enumerate(range(0, raw.shape[0], down)):
        strip = raw[top : top + down].astype(np.float64)
        finite = np.isfinite(strip)
        strip[~finite] = 0.0  # NaN and inf are left out of the means, and show black where alone
        sums = np.add.reduceat(strip.sum(axis=0), starts)
        counts = np.add.reduceat(finite.sum(axis=0), starts)
        with np.errstate(over="ignore", invalid="ignore"):  # huge sums become inf; 0 / 0 becomes NaN
            means[row] = sums / counts
    up = max(1, _TILE // max(means.shape))
    size = meta.get("pixel size")
    metres = size * down / up if isinstance(size, float) and 0 < size < math.inf else None
    return _Frame(means, up, label, metres)


def _range(frames: Sequence[_Frame]) -> tuple[float, float]:
    """The values shown black and white: the percentiles of the block means of ``frames`` together."""
    values = np.concatenate([frame.means[np.isfinite(frame.means)] for frame in frames])
    if not values.size:
        return 0.0, 0.0
    with np.errstate(over="ignore", invalid="ignore"):  # a range beyond float64 is handled by _gray
        low, high = np.percentile(values, _PERCENTILES)
    return float(low), float(high)


def _gray(frame: _Frame, low: float, high: float) -> npt.NDArray[np.uint8]:
    """The frame stretched from ``low`` (black) to ``high`` (white) and enlarged."""
    f = frame.means.copy()
    finite = np.isfinite(f)
    with np.errstate(over="ignore", invalid="ignore"):
        if 0.0 < high - low < math.inf:  # false for a constant image and for a range beyond float64
            f -= low
            f *= 255.0 / (high - low)
        else:
            f.fill(128.0)  # constant image: mid-gray, so it is not mistaken for an empty one
    f[~finite] = 0.0  # before the cast: casting NaN to uint8 warns
    np.clip(f, 0.0, 255.0, out=f)
    small = np.rint(f, out=f).astype(np.uint8)
    return small.repeat(frame.up, axis=0).repeat(frame.up, axis=1)


def _text(*lines: str) -> npt.NDArray[np.uint8]:
    """White text on black, one line under another, at _SCALE times the font's size."""
    width = 4 * max(map(len, lines)) + 1
    box = np.zeros((8 * len(lines), width), dtype=bool)
    for row, line in enumerate(lines):
        for k, ch in enumerate(line):
            box[8 * row + 1 : 8 * row + 7, 1 + 4 * k : 4 + 4 * k] = _FONT.get(ch, _FONT["?"])
    return np.where(box, 255, 0).astype(np.uint8).repeat(_SCALE, axis=0).repeat(_SCALE, axis=1)


def _put(
    sheet: npt.NDArray[np.uint8], top: int, left: int, pixels: npt.NDArray[np.uint8], bottom: int, right: int
) -> None:
    """Put ``pixels`` at (top, left), cut at row ``bottom`` and column ``right``."""
    part = pixels[: max(0, bottom - top), : max(0, right - left)]
    sheet[top : top + part.shape[0], left : left + part.shape[1]] = part


def _scale_bar(metres: float, width: int) -> tuple[int, str]:
    """A bar about a fifth of ``width`` px long at a round length (1, 2 or 5 times a power of ten):
    (its length in px, the length as text)."""
    target = width / 5 * metres
    power = 10.0 ** math.floor(math.log10(target))
    length = max(step * power for step in (1, 2, 5) if step * power <= target * (1 + 1e-9))
    return round(length / metres), _quantity(length, "m")


def _contact_sheet(frames: Sequence[_Frame], each: bool) -> npt.NDArray[np.uint8]:
    """Lay the frames out row-major in a grid, each cell as large as the largest tile, with its label at
    the top left, a scale bar at the bottom left, and under the grid the range from black to white:
    the same for all frames, or with ``each`` each frame's own."""
    each = each and len(frames) > 1
    ranges = [_range([frame]) for frame in frames] if each else [_range(frames)] * len(frames)
    tiles = [_gray(frame, *limits) for frame, limits in zip(frames, ranges)]
    ncols = math.ceil(math.sqrt(len(tiles)))
    nrows = -(-len(tiles) // ncols)
    cell_h = max(tile.shape[0] for tile in tiles)
    cell_w = max(tile.shape[1] for tile in tiles)
    footer = _footer(ranges[0], each, len(frames))
    height = nrows * (cell_h + _GAP) - _GAP
    width = max(ncols * (cell_w + _GAP) - _GAP, footer.shape[1])  # a small image gets a wider sheet
    sheet = np.full((height + _GAP + _LINE, width), _BACKGROUND, np.uint8)
    sheet[height + _GAP :] = 0
    sheet[height + _GAP :, : footer.shape[1]] = footer
    for i, (frame, tile, (low, high)) in enumerate(zip(frames, tiles, ranges)):
        r, c = (i // ncols) * (cell_h + _GAP), (i % ncols) * (cell_w + _GAP)
        bottom, right = r + tile.shape[0], c + tile.shape[1]
        sheet[r:bottom, c:right] = tile
        lines = [frame.label] + ([f"{_number(low)} to {_number(high)}"] if each else [])
        if any(lines):
            _put(sheet, r, c, _text(*lines), bottom, right)
        if frame.metres is not None:
            bar_px, length = _scale_bar(frame.metres, tile.shape[1])
            bar = _text(length)  # the length over a white bar, on black
            bar = np.pad(bar, ((0, 4 * _SCALE), (0, max(0, bar_px + 2 * _SCALE - bar.shape[1]))))
            bar[-3 * _SCALE : -_SCALE, _SCALE : _SCALE + bar_px] = 255
            _put(sheet, max(r, bottom - bar.shape[0]), c, bar, bottom, right)
    return sheet


def _footer(limits: tuple[float, float], each: bool, count: int) -> npt.NDArray[np.uint8]:
    """The line under the sheet: the values shown black and white with a gray ramp between them."""
    if each:
        words = [_ramp(), _text(" each frame from its own black to white, in its label")]
    else:
        words = [_text(_number(limits[0]) + " "), _ramp(), _text(" " + _number(limits[1]))]
        words += [_text("  the same for all frames")] if count > 1 else []
    return np.hstack(words)


def _ramp() -> npt.NDArray[np.uint8]:
    """A gray ramp from black to white, as tall as a glyph, with a line's margin above and below."""
    ramp = np.zeros((_LINE, _RAMP), np.uint8)
    ramp[_SCALE : _LINE - _SCALE] = np.rint(np.linspace(0, 255, _RAMP))
    return ramp


def _demo(path: str | None) -> None:
    """Write a small sample series (kept only at ``path``) and print what was read back."""
    import tempfile

    if path is not None and os.path.lexists(path):  # a typo must not replace a scientist's file
        raise FileExistsError(errno.EEXIST, f"{path} exists; name a new file for the sample series")
    rng = np.random.default_rng(7)
    rows, cols = np.mgrid[0:64, 0:96]
    blob = 100 + 2000 * np.exp(-((rows - 32) ** 2 + (cols - 48) ** 2) / (2 * 12.0**2))
    images = (
        {
            "raw": rng.poisson(blob * math.exp(-0.1 * t)).astype(np.uint16),  # camera counts
            "bg_data": np.full(blob.shape, 100, dtype=np.uint16),
            "meta": {"pixel size": 1.4e-7, "time": 0.5 * t, "identifier": f"frame {t}"},
        }
        for t in range(5)
    )
    with tempfile.TemporaryDirectory() as scratch:
        target = path or os.path.join(scratch, "demo_series.h5")
        fio.write_series(target, {"identifier": "demo run", "images": images})
        series = fio.read_series(target)
        kept = f"wrote {target}" if path else "wrote a sample series (pass a PATH to keep it)"
        print(f"{kept}, {os.path.getsize(target)} bytes, and read it back:")
        print(f"series identifier: {series['identifier']!r}, {len(series['images'])} images")
        for position, image in enumerate(series["images"]):
            # correct in floating point: uint16 counts minus a background would wrap around
            background = sum(b.astype(np.float64) for b in image["bg_data"].values())
            corrected, meta = image["raw"].astype(np.float64) - background, image["meta"]
            print(
                f"  fli_{position}: {meta['identifier']!r} raw {image['raw'].shape} {image['raw'].dtype}, "
                f"time {meta['time']} s, mean corrected intensity {corrected.mean():.1f}"
            )
        one = fio.read_image(target, index="frame 3")
        print(f"read_image(path, index='frame 3'): time {one['meta']['time']} s")


def _split_spec(spec: str) -> tuple[str, str]:
    """'FILE', 'FILE:/group/path' or 'FILE:group/path' -> (file, '/group/path'); an existing file wins
    over a split."""
    if not os.path.exists(spec):
        for at in (match.start() for match in re.finditer(":", spec)):
            if os.path.isfile(spec[:at]):
                return spec[:at], "/" + spec[at + 1 :].lstrip("/")
    return spec, "/"


@contextlib.contextmanager
def _open_spec(spec: str) -> Iterator[tuple[Any, str]]:
    path, inner = _split_spec(spec)
    with fio._open_read(path) as (root, label):
        if not inner.strip("/"):
            yield root, label
        elif inner in root and isinstance(root[inner], h5py.Group):
            yield root[inner], f"{path}:{root[inner].name}"
        else:
            raise fio.FormatError(f"{path} has no group {inner}")


def _check_file(spec: str, progress: bool = False) -> list[str]:
    """The library's check of ``FILE`` or ``FILE:/group``, showing its progress on stderr."""
    return fio._check(functools.partial(_open_spec, spec), _show_progress if progress else None)


def _show_progress(label: str, checked: int, total: int) -> None:
    if checked < total:
        print(f"\r{label}: checked {checked} of {total} images", end="", file=sys.stderr, flush=True)
    else:
        print("\r\033[K", end="", file=sys.stderr, flush=True)


# A damaged global heap (where HDF5 keeps text) can make the HDF5 library loop
# forever; `check` is for suspect files, so it runs in a child it can stop.
_CHECK_BASE_SECONDS = 60.0  # and half a second more per MiB


def _check_file_guarded(spec: str) -> list[str]:
    """:func:`_check_file` in a forked child process, stopped if it takes too long."""
    import multiprocessing

    if "fork" not in multiprocessing.get_all_start_methods():  # pragma: no cover - not POSIX
        return _check_file(spec)
    size = 0
    with contextlib.suppress(OSError):
        size = os.path.getsize(_split_spec(spec)[0])
    limit = _CHECK_BASE_SECONDS + 0.5 * size / 2**20
    context = multiprocessing.get_context("fork")
    receiver, sender = context.Pipe(duplex=False)
    progress = sys.stderr.isatty()
    parent = os.getpid()

    def check_in_child() -> None:
        _die_with(parent)
        sender.send(_check_file(spec, progress))

    child = context.Process(target=check_in_child, daemon=True)
    child.start()
    sender.close()
    try:
        if receiver.poll(limit):
            return list(receiver.recv())
        return [f"{spec}: checking took over {limit:.0f} s and was stopped; HDF5 may loop on damaged data"]
    except EOFError:
        return [f"{spec}: the check crashed (exit code {child.exitcode}); the file is damaged"]
    finally:
        child.kill()
        child.join()
        receiver.close()


_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def _die_with(parent: int) -> None:
    """Have the kernel kill this forked child when ``parent`` dies (on Linux), so that a check
    killed from outside (kill -9, a timeout) leaves no child behind that reads, and locks, the file."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before that took hold
        os._exit(1)


def _size(count: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{count} bytes"


def _number(value: float) -> str:
    """Four significant digits without an exponent; whole numbers below 100000 in full."""
    if value.is_integer() and abs(value) < 1e5:
        return str(int(value))
    text = f"{value:.4g}"
    if "e" in text and math.isfinite(value):
        return np.format_float_positional(float(text), trim="-")
    return text


_PREFIXES = (("", 1.0), ("m", 1e-3), ("µ", 1e-6), ("n", 1e-9), ("p", 1e-12))


def _quantity(value: float, unit: str) -> str:
    """A number with its unit; metres and seconds below 1 with the prefix that brings them to 1 or more:
    1.39e-07 m -> '139 nm', 0.04 s -> '40 ms'."""
    if unit in ("m", "s") and math.isfinite(value) and value != 0:
        rounded = float(f"{value:.4g}")  # 999.96 nm is 1 µm
        prefix, scale = next((p for p in _PREFIXES if abs(rounded) >= p[1]), _PREFIXES[-1])
        return f"{_number(rounded / scale)} {prefix}{unit}"
    return f"{_number(value)} {unit}".rstrip()


# The meta data keys in the order info shows them: what tells images apart first, the writers' versions last.
_META_ORDER = tuple(
    dict.fromkeys(("identifier", "date", "time", *fio.NUMBER_KEYS, *fio.SEQUENCE_KEYS, *fio.TEXT_KEYS))
)


def _meta_text(meta: Mapping[str, Any]) -> str:
    """'identifier 'cell 3', time 40 ms, pixel size 139 nm, ...'; text quoted, numbers with units."""
    shown = []
    for key in sorted(meta, key=_META_ORDER.index):  # the readers return no other keys
        value = meta[key]
        if isinstance(value, str):
            text = repr(value)
        elif isinstance(value, tuple):  # sim center
            text = f"({', '.join(map(_number, value))}) px"
        else:
            text = _quantity(value, fio.NUMBER_KEYS[key])
        shown.append(f"{key} {text}")
    return ", ".join(shown) or "none"


def _time_span(metas: Sequence[Mapping[str, Any]]) -> list[str]:
    """The times of the images as a line: their range and median interval, if two or more have one."""
    times = [meta["time"] for meta in metas if "time" in meta]
    if len(times) < 2:
        return []
    interval = _quantity(float(np.median(np.diff(times))), "s")
    line = f"  time: {_quantity(min(times), 's')} to {_quantity(max(times), 's')}, median interval {interval}"
    return [line + (f" ({len(times)} of {len(metas)} images have a time)" if len(times) < len(metas) else "")]


def _storage(images: Sequence[Any], label: str) -> list[str]:
    """The lines on the raw images: shape and dtype, background names, filters, chunks and sizes."""
    raws = [
        fio._child(fio._child(im, "fluorescence", label, h5py.Group), "raw", label, h5py.Dataset)
        for im in images
    ]
    for raw in raws:  # what the readers refuse, refused in their words (a null dataspace has no shape)
        fio._check_dataset(raw, label, None)
    first, kinds = raws[0], len({(raw.shape, raw.dtype.str) for raw in raws})
    same = "" if len(raws) == 1 else " (all images)" if kinds == 1 else f" (fli_0; {kinds} kinds)"
    backgrounds = fio._child(images[0]["fluorescence"], "bg_data", label, h5py.Group, required=False) or {}
    stored = sum(raw.id.get_storage_size() for raw in raws)
    logical = sum(raw.size * raw.dtype.itemsize for raw in raws)
    compression = first.compression
    if first.compression_opts:
        compression = f"{compression} level {first.compression_opts}"
    flags = (("shuffle", first.shuffle), (compression, compression), ("fletcher32", first.fletcher32))
    filters = [name for name, on in flags if on]
    chunks = "x".join(map(str, first.chunks)) if first.chunks else "contiguous"
    return [
        f"  raw: {'x'.join(map(str, first.shape))} {first.dtype}{same}; "
        f"background: {', '.join(sorted(backgrounds)) or 'none'}",
        f"  filters: {', '.join(filters) or 'none'}; chunks {chunks}; raw data stored in "
        f"{_size(stored)} of {_size(logical)} (ratio {logical / max(stored, 1):.2f})",
    ]


def _summary(group: Any, label: str, file_size: int | None) -> str:
    """An image or series: kind, images, raw data, file size, times, and the first and last image's meta."""
    if fio._layout_of(group, label) == "image":
        images, names, title = [group], ["meta"], f"{label}: FLImage"
        metas: list[Mapping[str, Any]] = [fio._read_meta(group, label, [])]
    else:
        series = fio.read_series(group, lazy=True)
        metas = [image["meta"] for image in series["images"]]  # without pixels
        named = "without identifier" if series["identifier"] is None else repr(series["identifier"])
        title = f"{label}: FLSeries {named}, {len(metas)} image{'s' * (len(metas) != 1)}"
        images = [fio._child(group, f"fli_{n}", label, h5py.Group) for n in range(len(metas))]
        names = [f"meta of fli_{n}" for n in range(len(metas))]
    lines = [title, *(_storage(images, label) if images else [])]
    lines += [] if file_size is None else [f"  file size: {_size(file_size)}"]
    lines += _time_span(metas)
    shown = sorted({0, len(metas) - 1}) if metas else []
    return "\n".join(lines + [f"  {names[n]}: {_meta_text(metas[n])}" for n in shown])


def _info(spec: str) -> str:
    """A summary of an image or series; of each one in the groups of a file that holds them in groups."""
    path = _split_spec(spec)[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", fio.UnknownMetaWarning)  # check lists them
        with _open_spec(spec) as (group, label):
            size = os.path.getsize(path)
            try:
                fio._layout_of(group, label)
            except fio.FormatError:  # neither an image nor a series
                found = fio._layouts_in(group)
                if not found:
                    raise
                images = sum("fluorescence" in g for g in found)
                kinds = [(images, "FLImage", "FLImages"), (len(found) - images, "FLSeries", "FLSeries")]
                held = " and ".join(f"{n} {one if n == 1 else many}" for n, one, many in kinds if n)
                head = f"{label}: {held} in groups; file size {_size(size)}"
                return "\n".join([head] + [_summary(g, fio._at(label, g), None) for g in found])
            return _summary(group, label, size)


def _label(meta: Mapping[str, Any], position: int | None) -> str:
    """What tells a frame apart: its identifier, else its time, else its name in the series."""
    identifier, time = meta.get("identifier"), meta.get("time")
    if isinstance(identifier, str) and identifier:
        return identifier
    if isinstance(time, float):
        return f"t={_quantity(time, 's')}"
    return "" if position is None else f"fli_{position}"


def _preview(spec: str, output: str | None, limit: int, each: bool) -> str:
    """Write a PNG contact sheet of a series (at most ``limit`` frames, evenly spread) or an image."""
    frames: list[_Frame] = []
    picked: list[int | None] = [None]  # an image: the group itself
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", fio.UnknownMetaWarning)  # a preview shows pixels; check lists them
        with _open_spec(spec) as (group, label):
            if fio._layout_of(group, label) == "series":
                count = len(fio.read_series(group, lazy=True)["images"])
                if count == 0:
                    raise fio.FormatError(f"{label} is a series without images: nothing to show")
                shown = min(limit, count)
                picked = [round(i * (count - 1) / max(shown - 1, 1)) for i in range(shown)]
            for position in picked:
                image = fio.read_image(group, position)
                frames.append(_reduce(image["raw"], image["meta"], _label(image["meta"], position)))
                del image  # before the next is read: one full-size frame in memory at a time
    target = output or os.path.splitext(_split_spec(spec)[0])[0] + ".png"
    with open(target, "wb") as handle:
        handle.write(_png(_contact_sheet(frames, each)))
    return f"wrote {target}: {len(frames)} frame{'s' * (len(frames) != 1)}"


def _frame_count(text: str) -> int:
    if not text.lstrip("-").isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, not {text!r}")
    return int(text)


def main(argv: Sequence[str] | None = None, prog: str = "python -m flimage_io") -> int:
    """Run the command line on ``argv`` (default: ``sys.argv[1:]``); return the exit status."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Read, check and look at FLImage / FLSeries HDF5 files.",
        epilog="FILE may name an image or series inside a larger file as FILE:/group/path.",
    )
    versions = f"h5py {h5py.__version__}, HDF5 {h5py.version.hdf5_version}, numpy {np.__version__}"
    parser.add_argument("--version", action="version", version=f"flimage_io {fio.__version__} ({versions})")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = commands.add_parser("demo", help="write a sample series and print what was read back")
    demo.add_argument("path", nargs="?", metavar="PATH", help="keep the sample file here (default: not kept)")
    for name, text in (
        ("check", "list every problem; exit status 0 only when all are clean"),
        ("info", "summarise each file"),
    ):
        commands.add_parser(name, help=text).add_argument("files", nargs="+", metavar="FILE")
    preview = commands.add_parser("preview", help="write a PNG contact sheet of a series or image")
    preview.add_argument("file", metavar="FILE")
    preview.add_argument("-o", "--output", metavar="OUT.png", help="default: FILE with .png for its suffix")
    preview.add_argument(
        "-n", "--frames", type=_frame_count, default=36, metavar="N", help="at most N frames (default 36)"
    )
    preview.add_argument(
        "--each",
        action="store_true",
        help="stretch each frame from its own black to white (default: one range for all frames, "
        "so that changes of intensity show)",
    )
    args = parser.parse_args(argv)
    if args.command is None:
        parser.error("name a command: demo, check, info or preview")
    failed = False
    try:
        if args.command == "demo":
            _demo(args.path)
        elif args.command == "preview":
            print(_preview(args.file, args.output, args.frames, args.each))
        elif args.command == "check":
            for spec in args.files:
                problems = _check_file_guarded(spec)
                failed = failed or bool(problems)
                summary = f"{len(problems)} problem(s)" if problems else "ok"
                print(f"{spec}: {summary}", *(f"  - {p}" for p in problems), sep="\n", flush=True)
        else:
            for spec in args.files:
                try:
                    summary = _info(spec)
                except (OSError, ValueError) as exc:  # fio.FormatError, and ValueError for a FIFO or device
                    failed, message = True, fio._message(exc)
                    named = message if _split_spec(spec)[0] in message else f"{spec}: {message}"
                    print(named, file=sys.stderr)
                else:
                    print(summary, flush=True)
        return int(failed)
    except BrokenPipeError:  # the reader of our output has gone (``| head``): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except (OSError, ValueError) as exc:  # a user's mistake or a bad file: one line, no traceback
        print(f"{parser.prog}: error: {fio._message(exc)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(prog="python -m flimage_io_cli"))
