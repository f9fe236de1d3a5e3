"""The command line of flimage_io: ``python -m flimage_io demo | check | info | preview``.

It lives beside ``flimage_io.py`` so that the library a project vendors stays one small file;
copy both files to have the command line too. ``check`` reads each image through the library's
own readers (its private helpers), and adds only what the readers do not check.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import importlib
import math
import os
import re
import signal
import struct
import sys
import time
import zlib
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import h5py
import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    import flimage_io as fio
else:  # the library beside this file: installed, or vendored inside a package
    fio = importlib.import_module(f"{__package__}.flimage_io" if __package__ else "flimage_io")

__all__ = ["main"]


# 3x5 font: one octal digit per row (top to bottom), its value 4 = left column. Small enough to review by eye;
# legibility at larger tiles comes from integer scaling of the labels, not from a bigger font.
_CHARS = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ .-_:=/#()+,?"
_CODES = (
    "75557 26227 71747 71317 55711 74717 74757 71111 75757 75717 25755 65656 34443 65556 74647 74644 34553 "
    "55755 72227 11152 55655 44447 57755 65555 25552 65644 25563 65655 34216 72222 55557 55552 55775 55255 "
    "55222 71247 00000 00002 00700 00007 02020 07070 11244 57575 24442 21112 02720 00024 71302"
)
_FONT = {
    ch: np.array([[int(d, 8) >> (2 - c) & 1 for c in range(3)] for d in code], dtype=bool)
    for ch, code in zip(_CHARS, _CODES.split())
}
_BACKGROUND = 48  # dark gray for gaps and unused cell area, so tile edges show against black image content
_GAP = 2  # px between cells
_TILE = 256  # px: the longer side of a frame on a contact sheet


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


def _fit(image: npt.NDArray[Any]) -> npt.NDArray[np.uint8]:
    """A raw frame as uint8, _TILE px on its longer side, stretched between its 0.5 and 99.5 percentiles."""
    # Stride first, then stretch: 100 frames of 4096^2 only ever stretch <=_TILE^2 pixels each. Nearest-
    # neighbour striding (not block means) keeps NaN/inf handling in one place. The readers checked the dtype.
    down = max(1, -(-max(image.shape) // _TILE))
    f: npt.NDArray[np.float64] = image[::down, ::down].astype(np.float64)  # a copy: the maths is in place
    finite = np.isfinite(f)
    sample = f[finite]  # filtering first: nanpercentile warns on all-NaN input
    with np.errstate(over="ignore", invalid="ignore"):  # huge finite ranges overflow; handled just below
        lo, hi = (float(v) for v in np.percentile(sample, [0.5, 99.5])) if sample.size else (0.0, 0.0)
        if 0.0 < hi - lo < math.inf:  # false for a constant image and for a range beyond float64
            f -= lo
            f *= 255.0 / (hi - lo)
        else:
            f.fill(128.0)  # constant image: mid-gray, so it is not mistaken for an empty one
    f[~finite] = 0.0  # before the cast: casting NaN to uint8 warns
    np.clip(f, 0.0, 255.0, out=f)
    small = np.rint(f, out=f).astype(np.uint8)
    up = max(1, _TILE // max(small.shape))  # enlarge tiny images by an integer factor: pixels stay square
    return small.repeat(up, axis=0).repeat(up, axis=1)


def _contact_sheet(frames: Sequence[tuple[npt.NDArray[Any], str]]) -> npt.NDArray[np.uint8]:
    """Lay labelled frames out row-major in a grid; each cell is as large as the largest fitted frame."""
    tiles = [(_fit(image), label) for image, label in frames]
    ncols = math.ceil(math.sqrt(len(tiles)))
    nrows = -(-len(tiles) // ncols)
    cell_h = max(t.shape[0] for t, _ in tiles)
    cell_w = max(t.shape[1] for t, _ in tiles)
    sheet = np.full((nrows * (cell_h + _GAP) - _GAP, ncols * (cell_w + _GAP) - _GAP), _BACKGROUND, np.uint8)
    scale = _TILE // 128  # 3x5 glyphs at 2x are readable on a 256 px tile
    for i, (pixels, label) in enumerate(tiles):
        r, c = (i // ncols) * (cell_h + _GAP), (i % ncols) * (cell_w + _GAP)
        sheet[r : r + pixels.shape[0], c : c + pixels.shape[1]] = pixels
        if label:  # white on a black box with a 1 px margin, cut at the cell edge rather than spill over
            box = np.zeros((7, 4 * len(label) + 1), dtype=bool)
            for k, ch in enumerate(label):
                box[1:6, 1 + 4 * k : 4 + 4 * k] = _FONT.get(ch.upper(), _FONT["?"])
            box = box.repeat(scale, axis=0).repeat(scale, axis=1)[:cell_h, :cell_w]
            sheet[r : r + box.shape[0], c : c + box.shape[1]] = np.where(box, 255, 0)
    return sheet


def _demo(path: str | None) -> None:
    """Write a small sample series (kept only at ``path``) and print what was read back."""
    import tempfile

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
    """'FILE' or 'FILE:/group/path' -> (file, group path); an existing file wins over a split."""
    if not os.path.exists(spec):
        for at in (match.start() for match in re.finditer(":/", spec)):
            if os.path.isfile(spec[:at]):
                return spec[:at], spec[at + 1 :]
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


# The file is locked while it is open: a check opens it for a block of images at a time, so that
# an append waits for one block at most.
_CHECK_BLOCK_SECONDS = 0.1


def _check_file(spec: str, progress: bool = False) -> list[str]:
    """Every problem found in a file, through the readers' own code; [] when clean. Images that
    are appended meanwhile may go unchecked."""
    problems: list[str] = []
    try:
        with _open_spec(spec) as (group, label):
            numbers = None
            if fio._layout_of(group, label) == "image":
                _check_one_image(group, label, problems)
            else:
                numbers = _check_series_root(group, label, problems)
        if numbers is not None:
            _check_series_images(spec, label, numbers, problems, progress)
    except (OSError, ValueError) as exc:  # fio.FormatError, and ValueError for a FIFO or device
        problems.append(_message(exc))
    return list(dict.fromkeys(problems))  # one damage can surface in several places


def _check_series_root(group: Any, label: str, problems: list[str]) -> list[int]:
    """What readers do not check of a series root: stray members and attributes; the image numbers."""
    for key in group.attrs:
        if key != "identifier":
            problems.append(f"{label} has the attribute {key!r}; a series root holds only 'identifier'")
    if "identifier" in group.attrs:
        try:
            fio._text_attr(group, "identifier", label)
        except fio.FormatError as exc:
            problems.append(str(exc))
    for name in fio._names(group):
        if not name.startswith("fli_"):
            problems.append(f"{label} has the member {name!r}, which is not part of an FLSeries")
    numbers, numbering = fio._scan_series(group, label)
    problems += numbering
    return numbers


def _check_series_images(
    spec: str, label: str, numbers: list[int], problems: list[str], progress: bool
) -> None:
    """Check the images ``numbers`` of a series, opening the file anew for each block; then duplicates."""
    owners: dict[str, list[str]] = {}
    checked = 0
    last_progress = time.monotonic()
    while checked < len(numbers):
        with _open_spec(spec) as (group, _):
            opened = time.monotonic()
            while checked < len(numbers) and time.monotonic() - opened < _CHECK_BLOCK_SECONDS:
                name = f"fli_{numbers[checked]}"
                identifier = _check_one_image(group, label, problems, name)
                if identifier is not None:
                    owners.setdefault(identifier, []).append(name)
                checked += 1
                if progress and time.monotonic() - last_progress > 0.5:
                    last_progress = time.monotonic()
                    count = f"{checked} of {len(numbers)}"
                    print(f"\r{label}: checked {count} images", end="", file=sys.stderr, flush=True)
    if progress:
        print("\r\033[K", end="", file=sys.stderr, flush=True)
    for identifier, owner in owners.items():
        if len(owner) > 1:
            problems.append(f"{label} has the identifier {identifier!r} on {len(owner)} images: {owner[:10]}")


def _check_one_image(parent: Any, label: str, problems: list[str], name: str | None = None) -> str | None:
    """Read one image as the readers do, then what flimage needs beyond that; its identifier."""
    try:
        group = parent if name is None else fio._child(parent, name, label, h5py.Group)
        where = fio._at(label, group)
        for key in ("flimage version", "qpimage version"):
            if key not in group.attrs:
                problems.append(f"{where} lacks the attribute {key!r}: flimage cannot open it read-only")
        fluorescence = fio._child(group, "fluorescence", label, h5py.Group)
        inner = fio._at(label, fluorescence)
        if len(fluorescence.attrs):
            problems.append(f"{inner} has attributes {sorted(fluorescence.attrs)}; it should have none")
        if "bg_data" not in fluorescence:
            problems.append(f"{inner} has no 'bg_data' group: flimage cannot open it read-only")
        kind = group.attrs.get_id("identifier").get_type() if "identifier" in group.attrs else None
        if isinstance(kind, h5py.h5t.TypeStringID) and not kind.is_variable_str():
            problems.append(
                f"{where} stores its identifier as fixed-length bytes: flimage cannot find it by it"
            )
        unknown: list[tuple[str, str]] = []
        (image,) = fio._load_images(group, label, [None], 1, unknown, problems)  # shapes, dtypes, checksums
        problems += [  # flimage refuses unknown meta keys; it writes attributes of its own on datasets
            f"{place} has the attribute {key!r}, which is no meta data key (flimage refuses it)"
            for key, place in unknown
            if place == where
        ]
        identifier = image["meta"].get("identifier")
        return identifier if isinstance(identifier, str) else None
    except (fio.FormatError, OSError) as exc:
        problems.append(str(exc))
        return None


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


def _info(spec: str) -> str:
    """A short summary of a file: kind, images, shape, dtype, filters, ratio, meta."""
    with _open_spec(spec) as (group, label):
        if fio._layout_of(group, label) == "image":
            images, title = [group], f"{label}: FLImage"
        else:
            count = fio._series_length(group, label)
            named = "without identifier"
            if "identifier" in group.attrs:
                named = repr(fio._text_attr(group, "identifier", label))
            images = [fio._child(group, f"fli_{n}", label, h5py.Group) for n in range(count)]
            title = f"{label}: FLSeries {named}, {count} image{'s' * (count != 1)}"
        if not images:
            return title
        raws = [
            fio._child(fio._child(im, "fluorescence", label, h5py.Group), "raw", label, h5py.Dataset)
            for im in images
        ]
        first, kinds = raws[0], len({(raw.shape, raw.dtype.str) for raw in raws})
        same = "" if len(raws) == 1 else " (all images)" if kinds == 1 else f" (fli_0; {kinds} kinds)"
        backgrounds = (
            fio._child(images[0]["fluorescence"], "bg_data", label, h5py.Group, required=False) or {}
        )
        stored = sum(raw.id.get_storage_size() for raw in raws)
        logical = sum(raw.size * raw.dtype.itemsize for raw in raws)
        compression = first.compression
        if first.compression_opts:
            compression = f"{compression} level {first.compression_opts}"
        flags = (("shuffle", first.shuffle), (compression, compression), ("fletcher32", first.fletcher32))
        filters = [name for name, on in flags if on]
        meta = fio._read_meta(images[0], label, [])
        chunks = "x".join(map(str, first.chunks)) if first.chunks else "contiguous"
        return (
            f"{title}\n  raw: {'x'.join(map(str, first.shape))} {first.dtype}{same}; "
            f"background: {', '.join(sorted(backgrounds)) or 'none'}\n"
            f"  filters: {', '.join(filters) or 'none'}; chunks {chunks}; raw data stored in "
            f"{_size(stored)} of {_size(logical)} (ratio {logical / max(stored, 1):.2f})\n"
            f"  {'meta' if images[0] is group else 'meta of fli_0'}: "
            + (", ".join(f"{key}={value!r}" for key, value in sorted(meta.items())) or "none")
        )


def _preview(spec: str, output: str | None, limit: int) -> str:
    """Write a PNG contact sheet of a series (at most ``limit`` frames, evenly spread) or an image."""
    with _open_spec(spec) as (group, label):
        names: list[str | None] = [None]  # an image: the group itself
        picked, series = [0], fio._layout_of(group, label) == "series"
        if series:
            count = fio._series_length(group, label)
            if count == 0:
                raise fio.FormatError(f"{label} is a series without images: nothing to show")
            frames_shown = min(limit, count)
            picked = [round(i * (count - 1) / max(frames_shown - 1, 1)) for i in range(frames_shown)]
            names = [f"fli_{p}" for p in picked]
        frames = []
        for position, image in zip(
            picked, fio._load_images(group, label, names, fio._check_workers(None), [])
        ):
            meta = image["meta"]
            detail = meta.get("identifier", f"t={meta['time']:g}s" if "time" in meta else "")
            frames.append((image["raw"], f"{position if series else ''} {detail}".strip()))
    target = output or os.path.splitext(_split_spec(spec)[0])[0] + ".png"
    with open(target, "wb") as handle:
        handle.write(_png(_contact_sheet(frames)))
    return f"wrote {target}: {len(frames)} frame{'s' * (len(frames) != 1)}"


def _frame_count(text: str) -> int:
    if not text.lstrip("-").isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, not {text!r}")
    return int(text)


def _message(exc: BaseException) -> str:
    """One line for the user: an OSError without its '[Errno N]' prefix."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror if exc.filename is None else f"{exc.filename}: {exc.strerror}"
    return str(exc)


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
    args = parser.parse_args(argv)
    if args.command is None:
        parser.error("name a command: demo, check, info or preview")
    failed = False
    try:
        if args.command == "demo":
            _demo(args.path)
        elif args.command == "preview":
            print(_preview(args.file, args.output, args.frames))
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
                    failed, message = True, _message(exc)
                    named = message if _split_spec(spec)[0] in message else f"{spec}: {message}"
                    print(named, file=sys.stderr)
                else:
                    print(summary, flush=True)
        return int(failed)
    except BrokenPipeError:  # the reader of our output has gone (``| head``): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except (OSError, ValueError) as exc:  # a user's mistake or a bad file: one line, no traceback
        print(f"{parser.prog}: error: {_message(exc)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(prog="python -m flimage_io_cli"))
