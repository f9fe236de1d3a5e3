"""Read and write FLImage / FLSeries HDF5 files with nothing but h5py and numpy.

Files written here open in ``flimage``, and every file ``flimage`` wrote opens here with the same
numbers. An image is ``{"raw": ndarray, "bg_data": {"data": ndarray}, "meta": {"time": 1.5}}``, a
series ``{"identifier": str | None, "images": [image, ...]}``: what the readers return, the writers
take. Copy this file into a project as is; deflate uses ``zlib-ng`` when installed, else ``zlib``.
Its command line, ``python -m flimage_io demo | check | info | preview``, is at its bottom (``main``).

Sections, in order:
1. Public API: the types, the errors and the four functions (``check`` is in section 8).
2. Argument checks: turn what the caller passes into what is stored, or refuse it.
3. Opening: ``_open_read`` and ``_open_write`` for paths, file objects and groups; locks.
4. Layout: find the images of a series and read their meta data.
5. Chunks: HDF5's shuffle, deflate and fletcher32 filters, and the ordered thread pipeline.
6. Storing and loading: images to and from HDF5 groups through that pipeline.
7. Lazy series: a sequence of images that reads on access.
8. Check: every problem the readers or ``flimage`` would have with a file.
9. Command line: ``main``, written against the public API and h5py only.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import ctypes
import datetime
import errno
import functools
import io
import itertools
import math
import numbers
import os
import re
import signal
import stat
import struct
import sys
import threading
import time
import types
import warnings
import weakref
import zlib
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from types import ModuleType
from typing import IO, Any, NamedTuple, TypedDict, TypeVar, Union, cast, overload

import h5py
import numpy as np
import numpy.typing as npt

_zlib_ng: ModuleType | None
try:  # optional accelerator, ``pip install "flimage_io[fast]"``
    from zlib_ng import zlib_ng as _zlib_ng
except ImportError:  # pragma: no cover - depends on the environment
    _zlib_ng = None

__version__ = "0.2.0"

__all__ = ["META_KEYS", "NUMBER_KEYS", "SEQUENCE_KEYS", "TEXT_KEYS", "FormatError", "Image"]
__all__ += ["ImageNotFoundError", "MetaValue", "Series", "Target", "UnknownMetaWarning"]
__all__ += ["check", "main", "read_image", "read_series", "write_image", "write_series"]

# 1. public API -----------------------------------------------------------------------------------------

# What a user imports: the meta data keys of the layout, the types of the dicts that go in and come out,
# the errors to catch, and the functions, each checking its arguments before anything touches the disk.

#: Meta data keys that hold real numbers (stored as float64), with their unit (read-only).
NUMBER_KEYS: Mapping[str, str] = types.MappingProxyType(
    {
        "pixel size": "m",
        "time": "s",
        "angle": "rad",
        "focus": "m",
        "numerical aperture": "",
        "pos x": "m",
        "pos y": "m",
        "sim radius": "m",
    }
)
#: Meta data keys that hold text (stored as variable-length UTF-8 strings).
TEXT_KEYS: tuple[str, ...] = ("date", "device", "identifier", "sim model", "software")
TEXT_KEYS += ("flimage version", "qpimage version")
#: Meta data key that holds a sequence of numbers (stored as a float64 array).
SEQUENCE_KEYS: tuple[str, ...] = ("sim center",)
#: The 16 meta data keys of the layout; ``flimage`` rejects any other key.
META_KEYS: frozenset[str] = frozenset(NUMBER_KEYS) | frozenset(TEXT_KEYS) | frozenset(SEQUENCE_KEYS)

MetaValue = Union[float, str, tuple[float, ...]]
Target = Union[str, bytes, "os.PathLike[str]", "os.PathLike[bytes]", IO[bytes], h5py.Group]


class Image(TypedDict):
    """One image as :func:`read_image` returns it and :func:`write_image` takes it."""

    raw: npt.NDArray[Any]
    bg_data: dict[str, npt.NDArray[Any]]
    meta: dict[str, MetaValue]


class Series(TypedDict):
    """A series as :func:`read_series` returns it and :func:`write_series` takes it;
    with ``lazy=True``, ``images`` is a read-only sequence of read-only mappings."""

    identifier: str | None
    images: Sequence[Image]


class FormatError(ValueError):
    """A file is damaged, or does not hold the FLImage / FLSeries layout asked for."""


class ImageNotFoundError(KeyError, IndexError):
    """The index or identifier names no image of the series: a ``KeyError``
    (as in ``flimage``) and an ``IndexError`` (as for lists)."""

    def __str__(self) -> str:  # the message as written; a KeyError would quote it
        return str(self.args[0]) if self.args else ""


class UnknownMetaWarning(UserWarning):
    """A file holds attributes that the returned dicts have no place for, so they are left out and a
    copy drops them: beyond the 16 meta data keys on an image (older ``flimage`` wrote ``wavelength``,
    ``medium index``, ``sim index``), beyond ``identifier`` on a series root, and on the groups and
    datasets below ``fluorescence`` (``flimage``'s ``bg_data/fit`` carries ``fit_offset``, ...)."""


def write_image(
    h5file: Target,
    image: Mapping[str, Any] | npt.NDArray[Any],
    *,
    dtype: npt.DTypeLike | None = None,
    compression: str | None = "gzip",
    level: int | None = None,
    shuffle: bool = True,
    workers: int | None = None,
) -> None:
    """Write one image in the FLImage layout.

    Parameters
    ----------
    h5file
        A path (``str``, ``bytes`` or ``os.PathLike``; replaced whole and atomically; through a
        symlink, its target), a binary file object opened ``"w+b"`` or ``"r+b"`` (replaced
        whole, not atomically), or an open, writable ``h5py.Group`` holding no image yet.
    image
        ``{"raw": 2-D array, "bg_data": {name: array} | array | None, "meta": {key: value} | None}``,
        or a bare 2-D array for ``{"raw": array}``. Meta ``date`` may be a ``datetime.date`` or
        ``datetime.datetime``, stored as ISO 8601 text (``"2026-11-25"``, ``"2026-11-25T14:03:07"``).
    dtype
        ``None`` (default) stores each array with its own dtype, so every value comes back
        exactly. ``"float32"`` stores what ``flimage`` stores and refuses integers it cannot hold
        exactly and finite values it would make inf. Bool stays bool.
    compression, level, shuffle
        ``"gzip"`` or ``None``; ``level=None`` is a fast run-length deflate, ``1`` to ``9`` a zlib
        level (``level=9, shuffle=False`` is ``flimage``'s setting); ``shuffle`` applies HDF5's
        byte shuffle first.
    workers
        Threads that encode chunks (default: the CPUs available).

    Raises
    ------
    TypeError, ValueError, KeyError
        For invalid arguments or image contents, before the disk is touched; shapes, dtypes
        and meta data before any array is copied.
    OSError
        The target cannot be written: ``PermissionError`` if write-protected, errno ``ENOSPC``
        on a full disk, ``BlockingIOError`` if another process holds the file for over 5 s.

    Examples
    --------
    >>> import numpy as np, io
    >>> write_image(io.BytesIO(), {"raw": np.ones((4, 5)), "meta": {"time": 1.5}})
    """
    options = _check_options(dtype, compression, level, shuffle, workers)
    checked = _check_image(image, options.dtype, "image")
    with _open_write(_resolve_to_write(h5file, append=False), append=False) as writing:
        _refuse_occupied(writing.group, writing.label, series=False)
        _store_images(writing, [(None, checked)], options)


def read_image(h5file: Target, index: int | str | None = None, *, workers: int | None = None) -> Image:
    """Read one image from an FLImage file, or one image of an FLSeries file.

    Parameters
    ----------
    h5file
        A path, a binary file object, or an open ``h5py.Group``.
    index
        ``None`` for an FLImage; for an FLSeries the image's position (negative counts from
        the end) or identifier. Only that image is read, so ``index=-1`` follows a series
        that another process appends to.
    workers
        Threads that decode chunks (default: the CPUs available).

    Returns
    -------
    Image
        ``{"raw": ndarray, "bg_data": {name: ndarray}, "meta": {key: value}}`` with the stored
        dtypes; meta numbers are ``float``, text ``str``, ``sim center`` a tuple of floats.
        Attributes the dicts have no place for (beyond the 16 meta data keys, on the groups and
        datasets below ``fluorescence``) are left out with an ``UnknownMetaWarning``.

    Raises
    ------
    FileNotFoundError, BlockingIOError
        The path does not exist, or another process writes it for long.
    FormatError
        The file is not HDF5, is damaged, points to other files, or holds another layout
        (e.g. a series read without ``index``).
    ImageNotFoundError
        ``index`` names no image of the series.

    Examples
    --------
    >>> import numpy as np, io
    >>> f = io.BytesIO(); write_image(f, np.eye(3))
    >>> read_image(f)["raw"].shape
    (3, 3)
    """
    if isinstance(index, numbers.Integral) and not isinstance(index, (bool, np.bool_)):
        index = int(index)  # numpy integers too
    elif isinstance(index, str):
        index = str(index)  # numpy's str_ too
    elif index is not None:
        raise TypeError(f"index must be an int, a str or None, not {type(index).__name__}")
    workers = _check_workers(workers)
    unknown: list[tuple[str, str]] = []
    with _open_read(h5file) as (group, label):
        layout = _layout_of(group, label)
        if layout == "image" and index is not None:
            raise FormatError(f"{label} holds a single FLImage: read it with index=None, not {index!r}")
        if layout == "series" and index is None:
            raise FormatError(
                f"{label} holds an FLSeries of {_series_length(group, label)} images, not an FLImage: "
                "pass index=<position or identifier>, or use read_series"
            )
        names = [None] if index is None else [f"fli_{_select(group, label, [index])[0]}"]
        (image,) = _load_images(group, label, names, workers, unknown)
    _warn_unknown(unknown)
    return image


def write_series(
    h5file: Target,
    series: Mapping[str, Any],
    *,
    dtype: npt.DTypeLike | None = None,
    compression: str | None = "gzip",
    level: int | None = None,
    shuffle: bool = True,
    workers: int | None = None,
    append: bool = False,
    commit_every: float | None = None,
) -> None:
    """Write a series of images in the FLSeries layout, or append to one.

    Parameters
    ----------
    h5file
        As for :func:`write_image`.
    series
        ``{"identifier": str | None, "images": iterable of images}``: dicts as for
        :func:`write_image` or bare 2-D arrays, a 3-D array, a generator (consumed once, a few
        images in memory at a time) or the lazy images of :func:`read_series`. Each image is
        stored as it was when yielded (a camera may reuse its buffer); identifiers must be unique.
    dtype, compression, level, shuffle, workers
        As for :func:`write_image`.
    append
        Add the images after the last ``fli_N`` of the series in ``h5file`` (created when
        missing or empty). ``series["identifier"]`` must be None or match the file's. A failed
        append leaves the series as it was.
    commit_every
        For a live acquisition (``append=True``, a path or a file object): every that many seconds
        the images taken so far are committed: on disk (fsynced), visible to readers, and kept
        through a crash or a power loss. An exception that the generator raises is raised unchanged
        once the images before it are committed; an invalid image undoes the images since the last
        commit. The images are taken from ``series["images"]`` in a thread of the call's own, so an
        image is committed within ``commit_every`` seconds of being taken even while the camera is
        quiet; if the call fails, that thread drops the next image the generator yields and ends.
        Readers, ours and plain h5py alike, open the file between commits; one that holds it open
        delays the next commit, never the acquisition. At its end the call waits for such a reader
        to close the file (a ``ResourceWarning`` after 5 s). ``None`` (default): one commit at the end.

    Raises
    ------
    TypeError, ValueError, KeyError
        For invalid arguments or images; one found while the images are consumed undoes the
        call (a file object written without ``append`` is not restored).
    FormatError
        ``append=True`` and the target holds an FLImage or another layout.
    OSError
        As for :func:`write_image`.

    Examples
    --------
    >>> import numpy as np, io
    >>> images = ({"raw": np.full((4, 4), t)} for t in range(3))
    >>> write_series(io.BytesIO(), {"identifier": "run 1", "images": images})
    """
    options = _check_options(dtype, compression, level, shuffle, workers)
    if not isinstance(append, bool):
        raise TypeError(f"append must be True or False, not {type(append).__name__}")
    _check_commit_every(commit_every, append, h5file)
    identifier, images = _check_series(series)
    # what would fail at the end fails before the generator is advanced
    target = _resolve_to_write(h5file, append=append)
    # the first image is checked before the target is touched (a file object is truncated)
    first = next(images, None)
    checked = [] if first is None else [_check_image(first, options.dtype, "series['images'][0]")]
    with _open_write(target, append=append, streaming=commit_every is not None) as writing:
        group = writing.group
        label = writing.label
        start = _prepare_append(group, label, identifier) if append else 0
        if not append:
            _refuse_occupied(group, label, series=True)
        if identifier is not None and "identifier" not in group.attrs:
            group.attrs["identifier"] = identifier
        if commit_every is None:
            _store_images(
                writing, _numbered_unique(group, label, start, checked, images, options), options
            )
            return
        feed = _Feed(images, options.dtype, len(checked))
        feed.start()
        try:
            numbered = _numbered_unique(group, label, start, checked, iter(feed), options)
            _store_images(writing, numbered, options, commit_every, feed.ready)
        finally:
            feed.stop()
            failure = feed.failure  # no cycle through the feed's frames
            feed.failure = None
    if failure is not None:  # the camera's error, raised once the images before it are committed
        raise failure


def read_series(
    h5file: Target,
    index: slice | range | Sequence[int | str] | None = None,
    *,
    lazy: bool = False,
    workers: int | None = None,
) -> Series:
    """Read the images of an FLSeries file, in numeric order.

    Parameters
    ----------
    h5file
        A path, a binary file object, or an open ``h5py.Group`` holding a series.
    index
        ``None`` for every image; a ``slice`` or ``range``; or a sequence of positions
        (negative count from the end) and identifiers, in its order.
    lazy
        Return at once with ``images`` a read-only sequence: ``len()`` reads nothing; an image, taken
        by position, identifier or slice, reads its ``meta`` without pixels and its arrays on first
        access; iteration reads a few images ahead on the workers. ``np.asarray(images)`` reads the
        raw images into one (frames, rows, columns) array at the memory cost of that array
        (ValueError for images of different shapes or dtypes, naming the first odd one). No file
        stays open between accesses, so it pickles (for a path) and survives forks; for a group,
        keep the group open. Appends to the file leave it readable; if the path names another file
        by then, a read raises FormatError.
    workers
        Threads that decode chunks (default: the CPUs available).

    Returns
    -------
    Series
        ``{"identifier": str | None, "images": [image, ...]}``, ``fli_10`` after ``fli_9``;
        images as for :func:`read_image`. Attributes of the series root but ``identifier`` are
        left out with an ``UnknownMetaWarning``.

    Raises
    ------
    FileNotFoundError, BlockingIOError, FormatError
        As for :func:`read_image`; also for a gap in the ``fli_`` numbering, and from a lazy
        series whose file was replaced since.
    ImageNotFoundError
        ``index`` names positions or identifiers the series lacks.

    Examples
    --------
    >>> import numpy as np, io
    >>> f = io.BytesIO(); write_series(f, {"identifier": None, "images": np.zeros((3, 2, 2))})
    >>> len(read_series(f, lazy=True)["images"]), len(read_series(f, [0, -1])["images"])
    (3, 2)
    >>> np.asarray(read_series(f, lazy=True)["images"]).shape
    (3, 2, 2)
    """
    workers = _check_workers(workers)
    selection = _check_selection(index)
    if not isinstance(lazy, bool):
        raise TypeError(f"lazy must be True or False, not {type(lazy).__name__}")
    unknown: list[tuple[str, str]] = []
    opened: list[os.stat_result] = []  # a path's, for a lazy series to know it again
    with _open_read(h5file, opened.append if lazy else None) as (group, label):
        if _layout_of(group, label) == "image":
            raise FormatError(
                f"{label} holds a single FLImage, not an FLSeries: read it with read_image"
            )
        keys = _attribute_names(group, label)
        identifier = _text_attr(group, "identifier", label) if "identifier" in keys else None
        unknown += [(key, label) for key in keys if key != "identifier"]  # a copy drops them
        positions = _select(group, label, selection)
        if lazy:
            known = _FileIdentity.of(opened[0], identifier) if opened else None
            images: Sequence[Image] = _LazyImages(h5file, positions, workers, known)
        else:
            images = list(_load_images(group, label, [f"fli_{p}" for p in positions], workers, unknown))
    _warn_unknown(unknown)
    return {"identifier": identifier, "images": images}


# 2. argument checks ------------------------------------------------------------------------------------

# Every mistake in what a caller passes is refused here, with a message naming the key, shape or value,
# before a file is touched; what passes becomes what is stored: a private copy in the stored dtype.


class _Options(NamedTuple):
    dtype: np.dtype[Any] | None
    compress: bool
    level: int | None
    shuffle: bool
    workers: int


class _CheckedImage(NamedTuple):
    raw: npt.NDArray[Any]  # a private copy in the storage dtype
    bg_data: dict[str, npt.NDArray[Any]]
    meta: dict[str, Any]


def _refuse_type(value: Any, kinds: type | tuple[type, ...], label: str, expected: str) -> None:
    """TypeError "LABEL must be EXPECTED" unless ``value`` is of ``kinds``; a bool is no number."""
    if not isinstance(value, kinds) or (isinstance(value, (bool, np.bool_)) and kinds is not bool):
        raise TypeError(f"{label} must be {expected}, not {type(value).__name__}")


def _check_workers(workers: Any) -> int:
    if workers is None:
        if hasattr(os, "sched_getaffinity"):  # the cores this process may use
            return max(1, len(os.sched_getaffinity(0)))
        return max(1, os.cpu_count() or 1)  # pragma: no cover - not on Linux
    _refuse_type(workers, numbers.Integral, "workers", "an int or None")
    if workers < 1:
        raise ValueError(f"workers must be at least 1, not {workers}")
    return int(workers)


def _check_options(dtype: Any, compression: Any, level: Any, shuffle: Any, workers: Any) -> _Options:
    storage = None
    if dtype is not None:
        try:
            storage = np.dtype(dtype)
        except TypeError as exc:
            raise TypeError(f"dtype {dtype!r} is not a numpy dtype: {exc}") from None
        if not _storable(storage):
            raise TypeError(
                f"dtype must be bool, int8-64, uint8-64, float16/32/64 or None, not {storage}"
            )
    if compression not in ("gzip", None):
        raise ValueError(
            f"compression must be 'gzip' or None (filters every HDF5 has), not {compression!r}"
        )
    if level is not None:
        _refuse_type(level, int, "level", "an int from 1 to 9 or None")
        if not 1 <= level <= 9:
            raise ValueError(f"level must be from 1 to 9 or None, not {level}")
        if compression is None:
            raise ValueError(f"level={level} needs compression='gzip', not compression=None")
    _refuse_type(shuffle, bool, "shuffle", "True or False")
    return _Options(storage, compression == "gzip", level, shuffle, _check_workers(workers))


def _check_commit_every(commit_every: Any, append: bool, h5file: Target) -> None:
    if commit_every is None:
        return
    _refuse_type(commit_every, numbers.Real, "commit_every", "a number of seconds or None")
    if not 0 < float(commit_every) < math.inf:
        raise ValueError(
            f"commit_every must be a positive, finite number of seconds, not {commit_every!r}"
        )
    if not append:
        raise ValueError(
            "commit_every needs append=True: a series written without it replaces the file whole, "
            "at the end of the call"
        )
    if isinstance(h5file, h5py.Group):
        raise TypeError(
            "commit_every needs a path or a file object: flush an h5py file you opened yourself"
        )


def _storable(dtype: np.dtype[Any]) -> bool:
    """Real numbers or bools of at most 8 bytes: what the layout holds."""
    return dtype.kind in "biuf" and dtype.itemsize <= 8


def _refuse_unknown(keys: Iterable[Any], valid: Collection[str], label: str, hint: str) -> None:
    for key in keys:
        if key not in valid:
            import difflib  # here: for a mistake only, not at every import of the module

            close = difflib.get_close_matches(str(key), sorted(valid), n=1, cutoff=0.5)
            guess = f"; did you mean {close[0]!r}?" if close else ""
            raise KeyError(f"{label} has the unknown key {key!r}{guess} ({hint})")


def _array_view(
    value: Any, storage: np.dtype[Any] | None, label: str, shape: tuple[int, ...] | None
) -> npt.NDArray[Any]:
    """``value`` as an array, without a copy where it is one; refused for its type, dtype or shape
    first, so that a 3-D stack passed as an image is never copied."""
    if isinstance(value, (str, bytes)) or value is None:
        raise TypeError(f"{label} must be a 2-D numeric array, not {type(value).__name__}")
    if isinstance(value, np.ma.MaskedArray):
        raise TypeError(
            f"{label} is a masked array, whose mask cannot be stored: pass value.filled(np.nan)"
        )
    declared = (getattr(value, "shape", None), getattr(value, "dtype", None))
    if isinstance(declared[0], tuple) and isinstance(declared[1], np.dtype):
        # an array, or an array-like that computes or reads its values (dask, h5py): refused unread
        _refuse_layout(value, storage, label, shape)
    try:
        source = np.asarray(value)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{label} is not an array: {exc}") from None
    # what it became: a list has no declared shape, an array-like may differ
    _refuse_layout(source, storage, label, shape)
    return source


def _refuse_layout(
    array: Any, storage: np.dtype[Any] | None, label: str, shape: tuple[int, ...] | None
) -> None:
    """Refuse an array or array-like for its dtype or shape as it declares them, unread."""
    found = array.shape
    if not _storable(array.dtype):
        raise TypeError(f"{label} must hold real numbers or bools, but has dtype {array.dtype}")
    if shape is None:
        if len(found) != 2:
            raise ValueError(f"{label} must be 2-D, but has shape {found}")
        if 0 in found:
            raise ValueError(f"{label} must not be empty, but has shape {found}")
    elif found != shape:
        raise ValueError(f"{label} must have the shape of raw {shape}, but has shape {found}")
    if found[-1] * _stored_dtype(array.dtype, storage).itemsize > _MAX_CHUNK_BYTES:
        raise ValueError(f"{label} has rows of over 4 GiB, HDF5's chunk limit (shape {found})")


def _stored_dtype(dtype: np.dtype[Any], storage: np.dtype[Any] | None) -> np.dtype[Any]:
    """Its own dtype or the one asked for, little-endian; bool stays bool, like flimage."""
    target = np.dtype(bool) if dtype.kind == "b" else dtype if storage is None else storage
    return target.newbyteorder("<") if target.itemsize > 1 else target


def _stored_copy(
    source: npt.NDArray[Any], storage: np.dtype[Any] | None, label: str
) -> npt.NDArray[Any]:
    """A private copy in the storage dtype, made while the caller waits: a camera may refill its buffer
    when the next image is asked for."""
    target = _stored_dtype(source.dtype, storage)
    if target == source.dtype:
        return np.array(source, copy=True)
    if target.kind in "iu" and source.dtype.kind == "f":
        raise TypeError(f"{label} holds {source.dtype} values, which {target} storage would truncate")
    with np.errstate(over="ignore", invalid="ignore"):
        stored = source.astype(target)
        # rounding fractions is what float storage means; losing integers or finite values is not
        if source.dtype.kind == "f":
            lost = np.isinf(stored) & np.isfinite(source)
        else:  # compared in the source's own dtype: exact even past 2**53
            lost = stored.astype(source.dtype) != source
    if lost.any():
        raise ValueError(
            f"{label} holds {source[lost][0].item()!r}, which {target} cannot hold (values from "
            f"{source.min()} to {source.max()}): pass dtype=None to store every value as it is"
        )
    return stored


def _meta_to_store(meta: Any, label: str) -> dict[str, Any]:
    """Checked meta data as stored, with both version attributes."""
    _refuse_type(meta, (Mapping, type(None)), label, "a dict of meta data")
    checked: dict[str, Any] = {}
    for key, value in (meta or {}).items():
        if not isinstance(key, str):
            raise TypeError(f"{label} keys must be str, not {type(key).__name__} ({key!r})")
        key = str(key)
        key_label = f"{label}[{key!r}]"
        _refuse_unknown([key], META_KEYS, label, f"valid keys: {', '.join(sorted(META_KEYS))}")
        if key in NUMBER_KEYS:
            checked[key] = _check_number(value, key_label)
        elif key == "date" and isinstance(value, datetime.date):  # and datetime: ISO 8601
            checked[key] = value.isoformat()
        elif key in TEXT_KEYS:
            expected = "a str, datetime.date or datetime.datetime" if key == "date" else "a str"
            checked[key] = _check_text(value, key_label, expected)
        elif isinstance(value, (str, bytes)) or not isinstance(value, (Sequence, np.ndarray)):
            raise TypeError(
                f"{key_label} must be a sequence of numbers, not {type(value).__name__} ({value!r})"
            )
        elif isinstance(value, np.ndarray) and value.ndim != 1:
            raise TypeError(
                f"{key_label} must be a flat sequence of numbers, but has shape {value.shape}"
            )
        else:
            checked[key] = np.array([_check_number(v, key_label) for v in value], dtype=np.float64)
    checked.setdefault("flimage version", f"flimage_io {__version__}")
    checked.setdefault("qpimage version", f"flimage_io {__version__}")
    return checked


def _check_number(value: Any, label: str) -> float:
    if not isinstance(value, numbers.Real) or isinstance(value, (bool, np.bool_, np.timedelta64)):
        raise TypeError(f"{label} must be a real number, not {type(value).__name__} ({value!r})")
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if math.isinf(number) and not (isinstance(value, (float, np.floating)) and np.isinf(value)):
        raise ValueError(f"{label} is {value!r}, too large for a float64")
    return number


def _check_text(value: Any, label: str, expected: str = "a str") -> str:
    if not isinstance(value, str):
        raise TypeError(f"{label} must be {expected}, not {type(value).__name__} ({value!r})")
    text = str(value)  # numpy's str_ too
    if "\x00" in text:
        raise ValueError(f"{label} contains a NUL character, which HDF5 strings cannot hold: {text!r}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"{label} is not valid Unicode text ({exc}): {text!r}") from None
    return text


def _check_image(image: Any, storage: np.dtype[Any] | None, label: str) -> _CheckedImage:
    """Every array's shape and dtype and the meta data are checked before any array is copied."""
    if isinstance(image, np.ndarray):
        image = {"raw": image}
    _refuse_type(image, Mapping, label, "a dict with 'raw', 'bg_data', 'meta' or an array")
    _refuse_unknown(image, ("raw", "bg_data", "meta"), label, "an image has 'raw', 'bg_data' and 'meta'")
    if "raw" not in image:
        raise KeyError(f"{label} has no 'raw' image")
    raw = _array_view(image["raw"], storage, f"{label}['raw']", None)
    bg_value = image.get("bg_data")
    views: dict[str, tuple[npt.NDArray[Any], str]] = {}  # name -> (array, label)
    if isinstance(bg_value, Mapping):
        for name, array in bg_value.items():
            name_label = f"{label}['bg_data'] name {name!r}"
            name = _check_text(name, name_label)
            if not name or "/" in name or name == ".":
                raise ValueError(f"{name_label} is no valid dataset name (empty, '.' or with '/')")
            bg_label = f"{label}['bg_data'][{name!r}]"
            views[name] = (_array_view(array, storage, bg_label, raw.shape), bg_label)
    elif bg_value is not None:
        bg_label = f"{label}['bg_data']"
        views["data"] = (_array_view(bg_value, storage, bg_label, raw.shape), bg_label)
    meta = _meta_to_store(image.get("meta"), f"{label}['meta']")
    bg_data = {name: _stored_copy(view, storage, bg_label) for name, (view, bg_label) in views.items()}
    return _CheckedImage(_stored_copy(raw, storage, f"{label}['raw']"), bg_data, meta)


def _check_series(series: Any) -> tuple[str | None, Iterator[Any]]:
    _refuse_type(series, Mapping, "series", "a dict with 'identifier' and 'images'")
    _refuse_unknown(series, ("identifier", "images"), "series", "a series has 'identifier' and 'images'")
    if "images" not in series:
        raise KeyError("series has no 'images'")
    identifier = series.get("identifier")
    if identifier is not None:
        identifier = _check_text(identifier, "series['identifier']", "a str or None")
    images = series["images"]
    if isinstance(images, np.ndarray) and images.ndim != 3:
        raise ValueError(
            f"series['images'] as an array must be 3-D (a stack of images), not {images.shape}"
        )
    if isinstance(images, (str, bytes, Mapping)) or not isinstance(images, Iterable):
        raise TypeError(f"series['images'] must be an iterable of images, not {type(images).__name__}")
    return identifier, iter(images)


def _check_selection(index: Any) -> slice | range | list[int | str] | None:
    if index is None or isinstance(index, (slice, range)):
        return index
    if isinstance(index, (str, bytes)) or not isinstance(index, (Sequence, np.ndarray)):
        raise TypeError(
            "index must be None, a slice, a range or a list of positions and identifiers, "
            f"not {type(index).__name__} {index!r} (read one image with read_image)"
        )
    for item in index:
        if isinstance(item, (bool, np.bool_)) or not isinstance(item, (numbers.Integral, str)):
            raise TypeError(f"index items must be ints or strs, not {type(item).__name__} {item!r}")
    return [str(item) if isinstance(item, str) else int(item) for item in index]


# 3. opening: one way in, one way out -------------------------------------------------------------------

# Every target (a path, a file object, a group) is opened here and only here, so that locks, commits and
# rollbacks work alike for each. Lessons from HDF5, h5py and POSIX, and where they are handled:
# - HDF5 1.12.0 (h5py 3.0) crashed after a file method it called failed or was interrupted by Ctrl-C:
#   _HeldWrites never fails a write (check() reports the error afterwards), and _keeps_interrupts
#   runs an interrupted method again; h5py 3.0 crashed closing a file again after a failed close:
#   _transaction closes once.
# - It crashed or misread when a process read a file it appended to in another thread: _in_process.
# - lockf belongs to the process and goes when it closes any handle of the file: the writer lock is an
#   open-file-description lock, lockf only a turnstile. An flock belongs to the open file description,
#   which a fork shares (see "Forks").
# - HDF5 1.10's superblock marks a file open for writing, so a killed append would leave it refused:
#   we write the 1.8 format, which every HDF5 since 2008 reads; its checksummed object headers make
#   damaged meta data raise instead of misread.
_LIBVER = ("v108", "v108")
_PATHS = (str, bytes, os.PathLike)  # a target that names a file: bytes as the os module takes them
_TEMP_SUFFIX = ".fio~"
_STALE_SECONDS = 60.0
_LOCK_WAIT = 5.0  # seconds a call waits for a file that another process holds

try:
    import fcntl as _fcntl
except ImportError:  # pragma: no cover - not POSIX: no advisory locks
    _fcntl = None  # type: ignore[assignment]

try:  # h5py's global lock, which every h5py call holds
    from h5py._objects import phil as _h5py_lock
except ImportError:  # pragma: no cover - h5py moved it
    _h5py_lock = threading.RLock()

# Forks. A child shares the open file descriptions, and with them our flocks: it would keep the file
# locked while it lives. So it closes its copies of our lock handles at once (never LOCK_UN, which
# would unlock the parent too), and HDF5 reads through such a handle instead of taking an flock of its
# own. Handles open and close under _FORK_GUARD, which a fork holds, so that no copy escapes; a fork
# holds h5py's lock too (h5py < 3.14 does not), so that no thread's HDF5 call is cloned half done.
_FORK_GUARD = threading.RLock()  # reentrant: a signal handler may fork while its thread holds it
_LOCK_HANDLES: weakref.WeakSet[_LockHandle] = weakref.WeakSet()
_LAZY_SERIES: weakref.WeakSet[_LazyImages] = weakref.WeakSet()  # their locks are made anew in a child


class _LockHandle(io.FileIO):
    """An unbuffered file that carries our advisory lock; a forked child closes its copy."""

    def __init__(self, path: str, mode: str, label: str | None = None) -> None:
        with _FORK_GUARD:
            super().__init__(path, mode)
            _LOCK_HANDLES.add(self)
        self._label = path if label is None else label

    def __repr__(self) -> str:
        # h5py names a file it reads through a file object by its repr: the groups of a path that
        # _open_read yields then say the path as given, as their file name, in messages
        return self._label

    def close(self) -> None:
        with _FORK_GUARD:
            super().close()


def _after_fork_in_child() -> None:
    for handle in list(_LOCK_HANDLES):
        with contextlib.suppress(OSError):
            handle.close()
    for series in list(_LAZY_SERIES):  # a thread that did not come along may have held one
        series._lock = threading.Lock()
    _FORK_GUARD.release()


if hasattr(os, "register_at_fork"):  # h5py's lock first: "before" hooks run in reverse order
    os.register_at_fork(
        before=_FORK_GUARD.acquire,
        after_in_parent=_FORK_GUARD.release,
        after_in_child=_after_fork_in_child,
    )
    os.register_at_fork(
        before=_h5py_lock.acquire, after_in_parent=_h5py_lock.release, after_in_child=_h5py_lock.release
    )


def _fileobj_label(handle: Any, *, write: bool, read: bool = True) -> str:
    """The name of a file object HDF5 can use; others are refused before any byte moves."""
    if not all(hasattr(handle, name) for name in ("read", "seek", "tell")):
        raise TypeError(
            f"h5file must be a path, a binary file object or an h5py.Group, not {type(handle)}"
        )
    name = _fileobj_name(handle)
    mode = getattr(handle, "mode", "b")
    if isinstance(handle, io.TextIOBase) or (isinstance(mode, str) and "b" not in mode):
        raise TypeError(f"{name} is opened in text mode; open it in binary mode ('rb', 'r+b' or 'w+b')")
    if getattr(handle, "closed", False):
        raise ValueError(f"{name} is closed")
    if isinstance(mode, str) and "a" in mode:
        raise ValueError(
            f"{name} is opened in append mode, where every write goes to the end: open it 'r+b'"
        )
    if write and not (hasattr(handle, "write") and getattr(handle, "writable", lambda: True)()):
        raise ValueError(f"{name} is opened read-only; open it 'w+b' or 'r+b' to write")
    if read and not getattr(handle, "readable", lambda: True)():
        raise ValueError(f"{name} is not readable; open it 'r+b'")
    return name


def _fileobj_name(handle: Any) -> str:
    name = getattr(handle, "name", None)
    return name if isinstance(name, str) else f"<{type(handle).__name__}>"


def _real_path(
    h5file: str | bytes | os.PathLike[str] | os.PathLike[bytes], *, write: bool, append: bool = False
) -> tuple[str, str]:
    """(path as given, real path): symlinks followed, non-files refused, and for a write what would
    only fail at the end (write protection, the final rename)."""
    label = os.fsdecode(os.fspath(h5file))
    real = os.path.realpath(label)
    try:
        info: os.stat_result | None = os.stat(real)
    except FileNotFoundError:
        if not write:
            raise FileNotFoundError(errno.ENOENT, f"no such file: {label}") from None
        info = None
    if info is not None and stat.S_ISDIR(info.st_mode):
        raise IsADirectoryError(errno.EISDIR, f"{label} is a directory, not an HDF5 file")
    if info is not None and not stat.S_ISREG(info.st_mode):
        kind = "a named pipe (FIFO)" if stat.S_ISFIFO(info.st_mode) else "a device or socket"
        raise ValueError(
            f"{label} is {kind}, not a regular file; flimage_io reads and writes only files"
        )
    if not write:
        return label, real
    directory = os.path.dirname(real)
    if not os.path.isdir(directory):
        raise _cannot_write(label, errno.ENOENT, f"the directory {directory} does not exist")
    # an append writes in place, its journal included: only a new file needs a writable directory
    if (info is None or not append) and not os.access(directory, os.W_OK | os.X_OK):
        raise _cannot_write(label, errno.EACCES, f"{directory} is not writable")
    if info is None:
        return label, real
    if not info.st_mode & 0o222 or not os.access(real, os.W_OK):
        mode = f"mode {stat.S_IMODE(info.st_mode):04o}"
        raise PermissionError(
            errno.EACCES, f"{label} is write-protected ({mode}): make it writable first"
        )
    folder = os.stat(directory)
    if (
        not append
        and folder.st_mode & stat.S_ISVTX
        and os.geteuid() not in (0, info.st_uid, folder.st_uid)
    ):
        message = f"cannot replace {label}: another user's file in a sticky directory"
        raise PermissionError(errno.EPERM, message)
    return label, real


def _cannot_write(label: str, number: int | None, reason: str | None) -> OSError:
    return OSError(number, f"cannot write {label}: {reason}")  # OSError picks the subclass of errno


def _in_use_error(label: str) -> BlockingIOError:
    message = f"{label} is in use by another process (locked for over {_LOCK_WAIT:g} s); try again later"
    return BlockingIOError(errno.EWOULDBLOCK, message)


def _lock(
    label: str, real: str, *, exclusive: bool, writer: bool = False, create: bool = False
) -> tuple[IO[bytes], bool]:
    """(handle, whether this call created the file) for ``real`` under our locks: flock (shared or
    ``exclusive``) keeps readers and commits apart, the writer lock writers; BlockingIOError after
    _LOCK_WAIT s."""
    deadline = time.monotonic() + _LOCK_WAIT
    while True:
        created = False
        if create and not os.path.exists(real):
            fresh, created = _create(real)
            if fresh is not None:
                return fresh, True
        try:
            handle = _LockHandle(real, "r+b" if writer else "rb", label)
        except FileNotFoundError:
            if not create:
                raise FileNotFoundError(errno.ENOENT, f"no such file: {label}") from None
            continue  # removed since we looked: create it
        if _fcntl is None:  # pragma: no cover - not POSIX
            return handle, created
        # without the writer lock (not Linux), a writer holds flock alone for the whole call; a file just
        # created (where the file system has no links) stays alone until its first commit
        if (writer and _OFD_SETLK is None) or created:
            exclusive = True
        kind = (_fcntl.LOCK_EX if exclusive else _fcntl.LOCK_SH) | _fcntl.LOCK_NB
        try:
            if writer:
                _retry(deadline, label, _writer_lock, handle)
            # flock is the lock (HDF5 takes the same); a POSIX lock on byte 0 is a turnstile
            # that a waiting writer holds, so that readers in a loop cannot starve it
            if _retry(deadline, label, _fcntl.lockf, handle, kind, 1):
                _retry(deadline, label, _fcntl.flock, handle, kind)
                _fcntl.lockf(handle, _fcntl.LOCK_UN, 1)
            with contextlib.suppress(FileNotFoundError):
                if os.path.samestat(os.fstat(handle.fileno()), os.stat(real)):
                    return handle, created
        except BaseException:
            handle.close()
            raise
        handle.close()  # replaced or removed while we waited: lock what the path is now


def _create(real: str) -> tuple[IO[bytes] | None, bool]:
    """Create ``real`` for an append: (handle, True) with the new file already locked, made under a
    temporary name and linked into place, so that no reader finds it empty before its first commit;
    (None, False) if it exists; (None, True) created unlocked where the file system has no links."""
    temp, handle = _new_temporary(real)
    try:
        if _fcntl is not None:
            _fcntl.flock(handle, _fcntl.LOCK_EX)
            _writer_lock(handle)
        os.link(temp, real)
        return handle, True
    except BaseException as exc:
        handle.close()
        # EEXIST: created by another call meanwhile, which the exclusive create below reports
        no_links = (errno.EEXIST, errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK)
        if not isinstance(exc, OSError) or exc.errno not in no_links:
            raise
    finally:
        with contextlib.suppress(OSError):
            os.unlink(temp)
    try:
        os.close(os.open(real, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))  # the umask applies
    except FileExistsError:
        return None, False
    return None, True


# The writer lock: an open-file-description lock (Linux) on one byte far past any data. Unlike flock it
# is independent of the readers' lock, so a streaming append keeps other writers out for its whole call
# while readers come and go between its commits; unlike a POSIX lock it stays while the process closes
# other handles of the file, and it keeps threads of one process apart too.
_OFD_SETLK: int | None = getattr(_fcntl, "F_OFD_SETLK", None)
_WRITER_BYTE = 2**62


def _writer_lock(handle: IO[bytes]) -> None:
    """Take the writer lock without waiting (OSError EAGAIN while another writer holds it)."""
    if _OFD_SETLK is None:  # pragma: no cover - not Linux: see _lock
        return
    request = struct.pack("hhqqi", _fcntl.F_WRLCK, os.SEEK_SET, _WRITER_BYTE, 1, 0)
    _fcntl.fcntl(handle.fileno(), _OFD_SETLK, request)


class _ReaderGate:
    """How an append on a path shares its file with readers: between commits it holds the readers' lock
    shared, so readers come and go (they see the last commit: new bytes lie past HDF5's end of
    allocation, changes to old ones wait in memory) and no other HDF5 writer gets in; a commit takes it
    alone. A new file stays alone until its first commit."""

    _ROUND = 0.05  # seconds the turnstile stays closed to new readers while a commit waits

    def __init__(self, handle: IO[bytes], label: str, *, alone: bool, last_wait: float | None) -> None:
        self._handle = handle
        self._label = label
        self.alone_now = alone
        self.last_wait = last_wait  # for the last commit; None: as long as it takes

    def alone(self, wait: float | None) -> bool:
        """Take the file alone for a commit; False if readers still hold it after ``wait`` seconds
        (None: wait as long as it takes, with a warning after _LOCK_WAIT s)."""
        if self.alone_now or _OFD_SETLK is None:
            return True
        started = time.monotonic()
        warn_after = _LOCK_WAIT if wait is None else math.inf
        while True:
            with contextlib.suppress(OSError):  # the turnstile: new readers wait for the round to end
                _fcntl.lockf(self._handle, _fcntl.LOCK_EX | _fcntl.LOCK_NB, 1)
            try:
                # False: no locks on this file system
                self.alone_now = _retry(time.monotonic() + self._ROUND, self._label, self._convert)
                return True
            except BlockingIOError:
                pass
            finally:
                with contextlib.suppress(OSError):
                    _fcntl.lockf(self._handle, _fcntl.LOCK_UN, 1)
            waited = time.monotonic() - started
            if wait is not None and waited >= wait:
                return False
            if waited > warn_after:
                warn_after = math.inf
                message = (
                    f"{self._label}: the images taken since the last commit wait for another process "
                    "that holds the file open (h5py, HDFView, napari) to close it"
                )
                warnings.warn(message, ResourceWarning, stacklevel=2)
            time.sleep(self._ROUND / 2)  # the turnstile open: readers waiting at it may read

    def _convert(self) -> None:
        """The readers' lock alone; a failed conversion may have dropped our shared one: take it back."""
        try:
            _fcntl.flock(self._handle, _fcntl.LOCK_EX | _fcntl.LOCK_NB)
        except OSError:
            with contextlib.suppress(OSError):
                _fcntl.flock(self._handle, _fcntl.LOCK_SH | _fcntl.LOCK_NB)
            raise

    def shared(self) -> None:
        """Let readers in again after a commit."""
        if self.alone_now and _OFD_SETLK is not None:
            _fcntl.flock(self._handle, _fcntl.LOCK_SH)
            self.alone_now = False


def _retry(deadline: float, label: str, lock: Callable[..., object], *args: object) -> bool:
    """Take a lock, retrying until the deadline; False on a file system without locks."""
    while True:
        try:
            lock(*args)
            return True
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                return False  # e.g. some network mounts: go on without
            if time.monotonic() > deadline:
                raise _in_use_error(label) from None
            time.sleep(0.005)


def _too_new_message(label: str, text: str) -> str | None:
    """A message when HDF5 says that a part of the file has a format version it does not know."""
    if "version" not in text or ("bad" not in text and "not supported" not in text):
        return None
    version = f"{h5py.version.hdf5_version} (h5py {h5py.__version__})"
    return f"{label} needs a newer HDF5 than the installed {version}: {text}"


def _h5_open(target: IO[bytes] | _HeldWrites, mode: str, label: str) -> h5py.File:
    try:
        return h5py.File(target, mode, libver=_LIBVER) if mode != "r" else h5py.File(target, "r")
    except (OSError, RuntimeError, ValueError) as exc:
        if "unable to lock file" in str(exc):
            raise _in_use_error(label) from None
        damaged = f"{label} is not a readable HDF5 file (empty, truncated or another format): {exc}"
        if mode == "r+":
            damaged = f"{label} cannot be opened to append to it (not HDF5, or damaged)"
        raise FormatError(_too_new_message(label, str(exc)) or damaged) from None


@contextlib.contextmanager
def _open_read(
    h5file: Target, check: Callable[[os.stat_result], None] | None = None
) -> Iterator[tuple[h5py.Group, str]]:
    """Yield (group, label) for any target, closing only what it opened. For a path, ``check`` gets the
    stat of the locked handle that HDF5 then reads through, and may raise to refuse that file."""
    with contextlib.ExitStack() as stack:
        if isinstance(h5file, h5py.Group):
            if not h5file.id.valid:
                raise ValueError("the h5py group is closed")
            group = h5file
            label = _at(h5file.file.filename, h5file)
        elif isinstance(h5file, _PATHS):
            label, real = _real_path(h5file, write=False)
            stack.enter_context(_in_process(label, real, append=False))
            handle = stack.enter_context(_lock(label, real, exclusive=False)[0])
            if _read_journal(handle) is not None:  # a commit cut short: roll it back, alone
                handle.close()
                try:
                    writer = _lock(label, real, exclusive=True, writer=True)[0]
                except PermissionError:
                    raise _interrupted_error(label) from None
                with writer:
                    _roll_back(writer)
                handle = stack.enter_context(_lock(label, real, exclusive=False)[0])
            if check is not None:
                check(os.fstat(handle.fileno()))
            # through our handle: HDF5 would flock a descriptor of its own, which a forked child keeps
            group = stack.enter_context(_h5_open(handle, "r", label))
        else:
            label = _fileobj_label(h5file, write=False)
            if _read_journal(h5file) is not None:
                if not getattr(h5file, "writable", lambda: False)():
                    raise _interrupted_error(label)
                _roll_back(h5file)
            group = stack.enter_context(_h5_open(h5file, "r", label))
        yield group, label


def _interrupted_error(label: str) -> PermissionError:
    message = (
        f"{label} holds an append that a kill or power loss cut short; the next call that may write "
        "the file rolls it back, and this one may not (the file or its handle is read-only)"
    )
    return PermissionError(errno.EACCES, message)


# The files this process appends to and reads, by (device, inode). A read in another thread waits for the
# append to end, and an append for such reads (h5py 3.0 crashed: segfaults, "no VOL object wrap
# context"); other processes read between commits. A read by the appending call itself (its own lazy
# images) is refused at once, instead of waiting for itself.
_IN_PROCESS = threading.Condition()
_APPENDING: dict[tuple[int, int], int] = {}  # -> the appending thread
_READING: collections.Counter[tuple[int, int]] = collections.Counter()


@contextlib.contextmanager
def _in_process(label: str, file: str | int, *, append: bool) -> Iterator[None]:
    """Keep the reads and appends of ``file`` (a path or a descriptor) by this process apart."""
    try:
        info = os.stat(file)
    except OSError:
        yield  # the lock that follows says what is wrong
        return
    key = (info.st_dev, info.st_ino)
    thread = threading.current_thread()
    with _IN_PROCESS:
        if append:
            if not _IN_PROCESS.wait_for(lambda: not _READING[key], _LOCK_WAIT):
                raise _in_use_error(label)
            _APPENDING[key] = threading.get_ident()
        elif _APPENDING.get(key) == (thread.caller if isinstance(thread, _Feed) else thread.ident):
            raise ValueError(
                f"{label} is being appended to by this very call, which cannot read from it: "
                "read the images with lazy=False first"
            )
        elif not _IN_PROCESS.wait_for(lambda: key not in _APPENDING, _LOCK_WAIT):
            message = f"{label} is being appended to by another thread of this process"
            message += f" for over {_LOCK_WAIT:g} s"
            raise BlockingIOError(errno.EWOULDBLOCK, f"{message}; read it from another process")
        else:
            _READING[key] += 1
    try:
        yield
    finally:
        with _IN_PROCESS:
            if append:
                del _APPENDING[key]
            elif _READING[key] == 1:
                del _READING[key]
            else:
                _READING[key] -= 1
            _IN_PROCESS.notify_all()


_Method = TypeVar("_Method", bound=Callable[..., Any])


def _keeps_interrupts(method: _Method) -> _Method:
    """For the methods HDF5 calls: a Ctrl-C that lands in one is noted, and the method runs again
    from where it began; check() raises it, outside HDF5's call (h5py would report it as SystemError)."""

    @functools.wraps(method)
    def run_whole(self: _HeldWrites, *args: Any) -> Any:
        position = self._position
        try:
            return method(self, *args)
        except KeyboardInterrupt:
            self.interrupted = True
            self._position = position
            return method(self, *args)

    return run_whole  # type: ignore[return-value]


class _HeldWrites:
    """The file object HDF5 writes through, so that a failed write changes nothing: bytes past the
    old end go to the file at once, writes over old bytes wait in memory for ``commit``, and
    ``rollback`` cuts the file back to its old length. A full disk or a kill -9 before the commit
    leaves the old file as it was. The commit, the one moment old bytes change, syncs the new bytes,
    appends a journal (the old bytes it will overwrite, the old length) past the new end, syncs,
    writes the held bytes, syncs, and cuts the journal off: the commit point. A kill, Ctrl-C or power
    loss in between leaves the journal, and the next call rolls back. In the file itself, the journal
    needs no writable folder."""

    def __init__(self, handle: Any, old_size: int) -> None:
        # what the caller buffered goes first; then we bypass the buffer, which a rollback cannot empty
        handle.flush()
        self._outer = handle
        self._handle = getattr(handle, "raw", handle)
        self._old_size = old_size
        self._position = 0
        self._held: dict[int, bytes] = {}  # offset -> bytes over the old file, in write order
        self._journal: list[tuple[int, bytes]] | None = None  # the old bytes, once the write-back began
        self._wrote = False
        self.error: OSError | None = None  # the first I/O error, which HDF5 reports vaguely
        self.interrupted = False  # a Ctrl-C landed in a method HDF5 called: check() raises it
        self.closed = False  # after the last commit or a rollback: nothing changes the file any more

    @_keeps_interrupts
    def seek(self, offset: int, whence: int = 0) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._position}.get(whence)
        self._position = offset + (self._handle.seek(0, os.SEEK_END) if base is None else base)
        return self._position

    def tell(self) -> int:
        return self._position

    @_keeps_interrupts
    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        start = self._position
        self._handle.seek(start)
        count = self._handle.readinto(view) or 0
        for offset, data in self._held.items():  # later writes win: a dict keeps write order
            low = max(offset, start)
            high = min(offset + len(data), start + len(view))
            if low < high:
                view[low - start : high - start] = data[low - offset : high - offset]
                count = max(count, high - start)
        self._position += count
        return count

    def read(self, size: int) -> bytes:  # h5py wants it, and reads with readinto
        buffer = bytearray(size)
        return bytes(buffer[: self.readinto(buffer)])

    @_keeps_interrupts
    def write(self, data: Any) -> int:
        if self.closed:
            raise OSError(errno.EBADF, "the write was rolled back")
        self._wrote = True
        view = memoryview(data).cast("B")
        split = min(len(view), max(0, self._old_size - self._position))
        if split:
            self._keep_in_memory(self._position, view[:split])
        try:
            if split < len(view) and self.error is None:
                _write_at(self._handle, self._position + split, view[split:])
        except OSError as exc:
            self.error = exc.with_traceback(None)
        if split < len(view) and self.error is not None:
            # HDF5 never sees a failed write (old HDF5 is unstable after one): the bytes are kept
            # here, readable, and check() fails the call at the next chunk or at the commit
            self._keep_in_memory(self._position + split, view[split:])
        self._position += len(view)
        return len(view)

    def _keep_in_memory(self, offset: int, data: memoryview) -> None:
        self._held.pop(offset, None)  # to the end of the write order: the latest write wins
        self._held[offset] = bytes(data)

    @_keeps_interrupts
    def truncate(self, size: int | None = None) -> int:
        size = self._position if size is None else size
        if not self._wrote:
            # HDF5's end of allocation, told before its first write (see _transaction): what lies
            # past it is a killed append's leftovers, no part of the file; cut, they would be held
            self._old_size = min(self._old_size, size)
        # never below the old end before the commit; HDF5 only grows a file here
        return int(self._handle.truncate(max(self._old_size, size)))

    @_keeps_interrupts
    def flush(self) -> None:
        self._handle.flush()

    def check(self) -> None:
        if self.interrupted:
            raise KeyboardInterrupt
        if self.error is not None:  # a new exception: one stored with a traceback would form a cycle
            raise OSError(self.error.errno, self.error.strerror)

    def commit(self) -> None:
        """Make the new bytes durable, then the held ones through the journal (see the class)."""
        self.check()
        self._sync()
        end = self._handle.seek(0, os.SEEK_END)  # the new length, which a later rollback returns to
        if self._held:
            journal = []
            for offset, data in self._held.items():
                journal.append((offset, _read_at(self._handle, offset, len(data))))
            _write_at(self._handle, end, _journal_bytes(end, self._old_size, journal))
            self._sync()
            self._journal = journal  # from here on, a rollback must restore these bytes
            for offset, data in self._held.items():
                _write_at(self._handle, offset, data)
            self._sync()
            self._handle.truncate(end)  # the commit point
            self._sync()
            self._held.clear()
            self._journal = None
        # nothing between the commit point and here may fail: a rollback would cut the committed file
        self._old_size = end

    def rollback(self) -> None:
        """Undo the call: restore what the write-back overwrote, cut the file to its old length; if
        that fails, the journal stays for the next call."""
        self.closed = True  # a late flush by HDF5 (at exit) must change nothing
        self._held.clear()
        _restore(self._handle, self._old_size, self._journal or [])
        self._outer.seek(0, os.SEEK_END)  # as in _sync

    def _sync(self) -> None:
        _sync_file(self._handle)
        self._outer.seek(0, os.SEEK_END)  # a buffered object forgets what it read before


# The journal that a commit appends past the new end of the file: for each region it overwrites,
# offset and length (two little-endian uint64) and the old bytes; then the tail: where the journal
# starts and the old length of the file (uint64 each), the CRC-32 of the journal up to it, and a
# marker. HDF5 ignores bytes past its end of allocation, so the file stays valid HDF5 meanwhile.
_JOURNAL_TAIL = struct.Struct("<QQI16s")
_JOURNAL_MARK = b"\x89flimage_io-jnl\n"
_JOURNAL_LIMIT = 1 << 30  # larger is no journal of ours (commits hold meta data only)


def _journal_bytes(start: int, old_size: int, regions: list[tuple[int, bytes]]) -> bytes:
    body = b"".join(struct.pack("<QQ", offset, len(data)) + data for offset, data in regions)
    crc = zlib.crc32(body + struct.pack("<QQ", start, old_size))
    return body + _JOURNAL_TAIL.pack(start, old_size, crc, _JOURNAL_MARK)


def _read_journal(handle: IO[bytes]) -> tuple[int, list[tuple[int, bytes]]] | None:
    """(old length, [(offset, old bytes)]) of the journal a commit left at the end of the file; None
    without one, or for one torn by a power loss (which the commit never acted on)."""
    size = handle.seek(0, os.SEEK_END)
    end = size - _JOURNAL_TAIL.size  # where the tail begins
    if end < 0:
        return None
    start, old_size, crc, mark = _JOURNAL_TAIL.unpack(_read_at(handle, end, _JOURNAL_TAIL.size))
    if mark != _JOURNAL_MARK or not old_size <= start <= end or end - start > _JOURNAL_LIMIT:
        return None
    body = _read_at(handle, start, end - start)
    if zlib.crc32(body + struct.pack("<QQ", start, old_size)) != crc:
        return None
    regions = []
    position = 0
    while position + 16 <= len(body):
        offset, length = struct.unpack_from("<QQ", body, position)
        data = body[position + 16 : position + 16 + length]
        if len(data) != length or offset + length > old_size:
            return None
        regions.append((offset, data))
        position += 16 + length
    return (old_size, regions) if position == len(body) else None


def _roll_back(handle: IO[bytes]) -> None:
    """Roll back a commit cut short, from the journal it left; the caller holds the file alone."""
    journal = _read_journal(handle)
    if journal is not None:
        with _signals_deferred():
            _restore(handle, *journal)


def _restore(handle: IO[bytes], old_size: int, regions: list[tuple[int, bytes]]) -> None:
    """Write the old bytes back, then cut the file to its old length, each step durable."""
    for offset, data in regions:
        _write_at(handle, offset, data)
    if regions:
        _sync_file(handle)
    handle.truncate(old_size)
    _sync_file(handle)


def _sync_file(handle: IO[bytes]) -> None:
    """Flush and fsync; a file object without a file descriptor is only flushed."""
    handle.flush()
    with contextlib.suppress(AttributeError, OSError, io.UnsupportedOperation):
        os.fsync(handle.fileno())


def _read_at(handle: Any, offset: int, size: int) -> bytes:
    handle.seek(offset)
    data = bytearray(size)
    view = memoryview(data)
    while view:
        count = handle.readinto(view)
        if not count:
            raise FormatError("the file ended while its rollback journal was read")
        view = view[count:]
    return bytes(data)


def _write_at(handle: IO[bytes], offset: int, data: bytes | memoryview) -> None:
    """Write every byte: on a full disk a raw file takes what fits, raising ENOSPC on the next call."""
    handle.seek(offset)
    view = memoryview(data).cast("B")
    while view:
        count = handle.write(view)
        if not count:  # None: a non-blocking file that would block
            raise OSError(errno.EIO, "the file took no bytes")
        view = view[count:]


# Signals whose Python handler may raise (Ctrl-C's KeyboardInterrupt, a SIGTERM handler calling exit)
_DEFERRED_SIGNALS = ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2", "SIGALRM")


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """Run the block with Python's signal handlers held back, then call them: a Ctrl-C during a
    commit waits for the commit or rollback to finish, instead of leaving it half done."""
    if threading.current_thread() is not threading.main_thread():
        yield  # Python runs signal handlers in the main thread only
        return
    caught: list[tuple[int, Any]] = []
    numbers = [getattr(signal, name) for name in _DEFERRED_SIGNALS if hasattr(signal, name)]
    installed = {number: signal.getsignal(number) for number in numbers}
    handlers = {number: handler for number, handler in installed.items() if callable(handler)}
    for number in handlers:
        signal.signal(number, lambda number, frame: caught.append((number, frame)))
    try:
        yield
    finally:
        for number, handler in handlers.items():
            signal.signal(number, handler)
        for number, frame in caught:
            handlers[number](number, frame)


# A target to write, resolved once and checked: its label, and a group, the real path of a path
# (symlinks followed) or a file object
_WriteTarget = tuple[str, Union[h5py.Group, str, IO[bytes]]]


def _resolve_to_write(h5file: Target, *, append: bool) -> _WriteTarget:
    """Refuse a target that cannot be written (a closed or read-only group, an unfit file object, a
    protected path) before anything is read or written."""
    if isinstance(h5file, h5py.Group):
        label = _at(h5file.file.filename, h5file) if h5file.id.valid else "?"
        if not h5file.id.valid or h5file.file.mode != "r+":
            raise ValueError(
                f"the h5py group {label} is closed or read-only; open the file with 'r+' or 'a'"
            )
        return label, h5file
    if isinstance(h5file, _PATHS):
        return _real_path(h5file, write=True, append=append)
    return _fileobj_label(h5file, write=True, read=append), h5file


@contextlib.contextmanager
def _open_write(target: _WriteTarget, *, append: bool, streaming: bool = False) -> Iterator[_Writing]:
    """Yield what to write into; a failure leaves the target as it was, or as its last commit left it.
    A path is replaced by a file written beside it; an append holds its changes to old bytes until a
    commit (_HeldWrites); a group gets back its old members and attributes. A ``streaming`` append
    waits for readers at its end."""
    label, resolved = target
    if isinstance(resolved, h5py.Group):
        group = resolved
        members = set(group)
        attributes = set(group.attrs)
        try:
            yield _Writing(group, label, lambda: None, lambda: True)
        except BaseException:
            for name in set(group) - members:
                del group[name]
            for name in set(group.attrs) - attributes:
                del group.attrs[name]
            raise
    elif isinstance(resolved, str):
        path = resolved
        with _append_path(label, path, streaming) if append else _replace_path(label, path) as writing:
            yield writing
    else:
        handle = resolved
        if append:
            handle.flush()
            _roll_back(getattr(handle, "raw", handle))
        size = handle.seek(0, os.SEEK_END) if append else 0
        if not size:
            handle.seek(0)
            handle.truncate()
        with _transaction(handle, size, label) as writing:
            yield writing


class _Writing(NamedTuple):
    """What the writers write into: ``check()`` raises a write error that HDF5 was not shown;
    ``commit()`` makes what was stored so far durable and visible, False while readers hold the file."""

    group: h5py.Group
    label: str
    check: Callable[[], None]
    commit: Callable[[], bool]


@contextlib.contextmanager
def _transaction(
    handle: IO[bytes], size: int, label: str, gate: _ReaderGate | None = None
) -> Iterator[_Writing]:
    """h5py over ``handle`` (``size`` old bytes) through _HeldWrites, committed at the end (``gate``:
    once readers leave) and rolled back on failure."""
    held = _HeldWrites(handle, size)
    opened = _h5_open(held, "r+" if size else "w", label)

    def commit(wait: float | None = _ReaderGate._ROUND, last: bool = False) -> bool:
        held.check()
        if not last:
            opened.flush()  # HDF5 writes what it cached: the file it leaves is whole
        if gate is not None and not gate.alone(wait):
            return False
        with _signals_deferred():  # a signal held back lands after the commit
            try:
                held.commit()
            except OSError as exc:  # e.g. a full disk while the journal is written: named below
                held.error = held.error or OSError(exc.errno, exc.strerror)
                raise
            held.closed = last  # a signal held back during the last commit undoes nothing
        if gate is not None and not last:
            gate.shared()
        return True

    try:
        try:
            if size:
                # HDF5 cuts the file to its end of allocation at a flush, before it has written
                # anything: bytes a killed append left past it go then (see _HeldWrites.truncate)
                opened.flush()
            yield _Writing(opened, label, held.check, commit)
        finally:
            opened.close()
        if not commit(None if gate is None else gate.last_wait, last=True):
            raise _in_use_error(label)
    except BaseException as exc:  # closed once only: h5py 3.0 crashes closing a failed file again
        if not held.closed:
            with contextlib.suppress(OSError), _signals_deferred():
                held.rollback()
        if held.error is not None and isinstance(exc, Exception):
            raise _cannot_write(label, held.error.errno, held.error.strerror) from exc
        if isinstance(exc, SystemError) and isinstance(exc.__cause__, KeyboardInterrupt):
            # a Ctrl-C that landed in one of our methods while HDF5 called it: h5py reports it so
            raise exc.__cause__ from None
        raise


@contextlib.contextmanager
def _append_path(label: str, real: str, streaming: bool) -> Iterator[_Writing]:
    handle, created = _lock(label, real, exclusive=False, writer=True, create=True)
    gate = _ReaderGate(handle, label, alone=created, last_wait=None if streaming else _LOCK_WAIT)
    with handle, _in_process(label, handle.fileno(), append=True):
        try:
            if _read_journal(handle) is not None:
                if not gate.alone(_LOCK_WAIT):
                    raise _in_use_error(label)
                _roll_back(handle)
                gate.shared()  # never a new file: that has no journal
            size = handle.seek(0, os.SEEK_END)
            with _transaction(handle, size, label, gate) as writing:
                yield writing
        except BaseException:
            if created and handle.seek(0, os.SEEK_END) == 0:
                os.unlink(real)  # ours and still locked: nobody else wrote to it
            raise
    if created:
        _sync_directory(os.path.dirname(real))  # the new name survives a power loss too


@contextlib.contextmanager
def _replace_path(label: str, real: str) -> Iterator[_Writing]:
    info: os.stat_result | None = None
    with contextlib.suppress(FileNotFoundError):
        info = os.stat(real)  # now: a generator's first image may have taken a while since the check
    with contextlib.ExitStack() as stack:
        if info is not None:
            # Alone on the old file proves that nobody holds it open; sharing it
            # then lets readers in while appenders (who would be lost) wait.
            old = stack.enter_context(_lock(label, real, exclusive=True, writer=True)[0])
            if _fcntl is not None:
                _fcntl.flock(old, _fcntl.LOCK_SH)
        try:
            temp, handle = _new_temporary(real)
            stack.enter_context(handle)
        except OSError as exc:  # no inode left, a quota: name what the caller wrote
            raise _cannot_write(label, exc.errno, exc.strerror) from None
        try:
            if _fcntl is not None:
                _fcntl.flock(handle, _fcntl.LOCK_EX)  # marks the temporary as live
            if info is not None:  # keep the old file's mode, owner and group where permitted
                os.fchmod(handle.fileno(), stat.S_IMODE(info.st_mode))
                for owner in ((info.st_uid, info.st_gid), (-1, info.st_gid)):
                    with contextlib.suppress(OSError):
                        os.fchown(handle.fileno(), *owner)
                        break
            with _transaction(handle, 0, label) as opened:
                yield opened
            os.replace(temp, real)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise
        _sync_directory(os.path.dirname(real))  # make the rename durable


def _sync_directory(directory: str) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _new_temporary(real: str) -> tuple[str, _LockHandle]:
    """A new hidden file beside ``real`` (the umask applies), named to fit wherever the name of ``real``
    fits, after deleting the temporaries that a killed writer of ``real`` left: older than a minute
    and not locked (a live writer holds its lock). Other files, even names that begin alike, stay."""
    directory, base = os.path.split(real)
    short = base.encode("utf-8", "surrogateescape")[:230].decode("utf-8", "ignore")
    ours = re.compile(re.escape(f".{short}.") + "[0-9a-f]{8}" + re.escape(_TEMP_SUFFIX))
    with contextlib.suppress(OSError):
        # not POSIX: no lock tells a live writer
        names = os.listdir(directory) if _fcntl is not None else []
        for name in filter(ours.fullmatch, names):
            path = os.path.join(directory, name)
            with contextlib.suppress(OSError), _LockHandle(path, "rb") as handle:
                _fcntl.flock(handle, _fcntl.LOCK_EX | _fcntl.LOCK_NB)  # raises while a writer lives
                if time.time() - os.fstat(handle.fileno()).st_mtime > _STALE_SECONDS:
                    os.unlink(path)
    temp = os.path.join(directory, f".{short}.{os.urandom(4).hex()}{_TEMP_SUFFIX}")
    return temp, _LockHandle(temp, "x+b")


def _refuse_occupied(group: h5py.Group, label: str, *, series: bool) -> None:
    holds = [name for name in _names(group, label) if name == "fluorescence" or name.startswith("fli_")]
    keys = _attribute_names(group, label)
    if holds or (not series and keys) or (series and "identifier" in keys):
        found = f"members {holds}" if holds else f"attributes {sorted(keys)}"
        kind = "a series" if series else "an image"
        raise ValueError(
            f"{label} already holds {found}; write {kind} into a new, empty group or a path"
        )


# 4. layout ---------------------------------------------------------------------------------------------

# The FLImage / FLSeries layout as found in a file, whichever flimage version or tool wrote it: which
# kind a group holds, where its images are, and their meta data; an odd finding is a FormatError.

_SERIES_NAME = re.compile(r"fli_(0|[1-9][0-9]*)\Z")


def _at(label: str, node: h5py.HLObject) -> str:
    """'file.h5:/fli_3/fluorescence/raw' from the file's label and an object in it."""
    return label.split(":/", 1)[0] + ("" if node.name == "/" else f":{node.name}")


class _Reading:
    """Around h5py calls that read the file: their errors report its bytes (damaged, or from a newer
    HDF5) and become a FormatError naming ``label``; only h5py calls go inside, never our own code.
    A class: the readers enter it a dozen times an image, and a generator costs 4x as much."""

    def __init__(self, label: str) -> None:
        self._label = label

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, _: object) -> None:
        if isinstance(exc, (OSError, RuntimeError, KeyError, ValueError, TypeError)):
            damaged = f"{self._label} cannot be read, the file is damaged: {exc}"
            raise FormatError(_too_new_message(self._label, str(exc)) or damaged) from exc


def _names(group: h5py.Group, label: str) -> list[str]:
    """The member names; one that is not UTF-8 (h5py gives bytes) is shown escaped, never looked up."""
    with _Reading(label):
        names = list(group)
    return [
        name if isinstance(name, str) else name.decode("utf-8", "backslashreplace") for name in names
    ]


def _has(group: h5py.Group, name: str, label: str) -> bool:
    with _Reading(label):
        return name in group


def _attribute_names(node: h5py.HLObject, label: str, usual: Collection[str] = ()) -> list[str]:
    """The names of the attributes of ``node``. When they are only the ``usual`` ones (or none), plain
    HDF5 calls tell so at a fraction of the cost of a listing, which calls back into Python."""
    with _Reading(label):
        count = h5py.h5a.get_num_attrs(node.id)
        if count == len(usual) and all(h5py.h5a.exists(node.id, key.encode()) for key in usual):
            return list(usual)
        return list(node.attrs)


def _attribute(node: h5py.HLObject, key: str, label: str) -> Any:
    with _Reading(label):
        return node.attrs[key]


def _linked_groups(group: h5py.Group, names: Iterable[str], label: str) -> list[h5py.Group]:
    """The groups among the members ``names`` of ``group`` under hard links: no soft link (which may
    loop) nor link to another file is followed, nor a name shown escaped."""
    with _Reading(label):
        info = group.id.links.get_info
        hard = [
            name for name in names if name in group and info(name.encode()).type == h5py.h5l.TYPE_HARD
        ]
        return [member for member in map(group.get, hard) if isinstance(member, h5py.Group)]


def _holds_layout(names: Collection[str]) -> bool:
    """Whether a group with these member names holds an image or a series."""
    return "fluorescence" in names or any(name.startswith("fli_") for name in names)


def _layout_of(group: h5py.Group, label: str) -> str:
    """'image' or 'series'; anything else raises FormatError naming where layouts are."""
    if _has(group, "fluorescence", label):
        return "image"
    if _has(group, "fli_0", label):  # without listing the members of a long series
        return "series"
    names = _names(group, label)
    if not names or any(name.startswith("fli_") for name in names):
        return "series"
    members = _linked_groups(group, names[:100], label)
    nested = [member.name for member in members if _holds_layout(_names(member, label))]
    hint = f"; it holds them in {', '.join(nested)}: name one as FILE:{nested[0]}" if nested else ""
    raise FormatError(
        f"{label} holds neither an FLImage (no 'fluorescence' group) nor an FLSeries "
        f"(no 'fli_' groups){hint}; found members {sorted(names)[:10]}"
    )


_Member = TypeVar("_Member", h5py.Group, h5py.Dataset)


def _child(group: h5py.Group, name: str, label: str, kind: type[_Member]) -> _Member:
    """The member ``name`` of the given kind; unlike ``group.get``, a damaged member raises, and a
    link to another file is refused."""
    with _Reading(label):
        link = group.id.links.get_info(name.encode("utf-8")) if name in group else None
        member = None if link is None or link.type == h5py.h5l.TYPE_EXTERNAL else group[name]
    if isinstance(member, kind):
        return member
    if link is None:
        problem = "is missing"
    elif member is None:
        problem = "is a link to another file, which flimage_io does not follow"
    else:
        problem = f"should be a {kind.__name__.lower()}, but is {type(member).__name__}"
    raise FormatError(f"{_at(label, group)}{':' if group.name == '/' else ''}/{name} {problem}")


def _scan_series(group: h5py.Group, label: str) -> tuple[list[int], list[str]]:
    """The image numbers present, sorted, and the problems of the numbering."""
    names = _names(group, label)
    found = sorted(int(name[4:]) for name in names if _SERIES_NAME.match(name))
    problems = [
        f"{label} has the member {name!r}, which is no valid series name (fli_0, fli_1, ...)"
        for name in names
        if name.startswith("fli_") and not _SERIES_NAME.match(name)
    ]
    # the first ten absent numbers, in memory and time in proportion to the members, not to the largest
    gaps = (number for low, high in zip([-1, *found], found) for number in range(low + 1, high))
    missing = [f"fli_{number}" for number in itertools.islice(gaps, 10)]
    if missing:
        problems.append(
            f"{label} is a series with a gap in its numbering: {', '.join(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} missing ({len(found)} images, the largest is "
            f"fli_{found[-1]}); flimage fails on it"
        )
    return found, problems


def _series_length(group: h5py.Group, label: str) -> int:
    """Length of a series; without listing the members when the count of links fits 'fli_0' ..
    'fli_{n-1}' (a gap hidden by a stray member then fails when the missing image is read)."""
    with _Reading(label):
        count = len(group)
        fits = count and f"fli_{count - 1}" in group and f"fli_{count}" not in group and "fli_0" in group
    if fits:
        return count
    found, problems = _scan_series(group, label)
    if problems:
        raise FormatError(problems[0])
    return len(found)


def _select(
    group: h5py.Group, label: str, selection: slice | range | list[int | str] | None
) -> list[int]:
    """The positions an index names, in its order; unknown ones raise ImageNotFoundError."""
    count = _series_length(group, label)
    if selection is None or isinstance(selection, slice):
        return list(range(count)[selection or slice(None)])
    if isinstance(selection, range) and (
        not selection or -count <= min(selection) <= max(selection) < count
    ):
        return [p % count for p in selection]  # no per-item checks for a long range
    chosen: list[int] = []
    missing: list[str] = []
    identifiers: dict[str, int] | None = None
    for item in selection:
        if isinstance(item, int):
            found = item % count if -count <= item < count else None
        else:
            # an identifier costs an object header per image to read, so first try the positions its
            # numbers suggest ("frame-0500" is usually fli_500 or fli_499)
            digits = [int(d) for d in re.findall(r"[0-9]+", item)[-3:] if len(d) <= 18]
            guesses = [n - shift for n in reversed(digits) for shift in (0, 1) if 0 <= n - shift < count]
            hits = (p for p in dict.fromkeys(guesses) if _identifier_of(group, label, p) == item)
            found = next(hits, None)
            if found is None:  # read every identifier, once per call
                identifiers = _identifiers(group, label, count) if identifiers is None else identifiers
                found = identifiers.get(item)
                if found == -1:
                    raise FormatError(f"{label} has several images with identifier {item!r}")
        if found is None:
            missing.append(f"position {item}" if isinstance(item, int) else f"identifier {item!r}")
        else:
            chosen.append(found)
    if missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise ImageNotFoundError(
            f"{label} has {count} images and none at {', '.join(missing[:5])}{more}"
        )
    return chosen


_VARIABLE_TEXT = h5py.h5t.py_create(h5py.string_dtype())  # reads variable-length text as bytes objects


def _identifiers(group: h5py.Group, label: str, count: int) -> dict[str, int]:
    """Identifier -> position of the first ``count`` images of a series; -1 for one used twice."""
    found: dict[str, int] = {}
    for position in range(count):
        identifier = _identifier_of(group, label, position)
        if identifier is not None:
            found[identifier] = -1 if identifier in found else position
    return found


def _identifier_of(group: h5py.Group, label: str, position: int) -> str | None:
    """The identifier of image ``position``. The usual one, a variable-length text on a group under a
    hard link, is read through h5py's low-level API at half the cost; any other goes through _child and
    _text_attr, which name what is wrong or read what old writers stored."""
    name = f"fli_{position}".encode()
    try:
        if group.id.links.get_info(name).type == h5py.h5l.TYPE_HARD:  # not followed to another file
            image = h5py.h5o.open(group.id, name)
            if isinstance(image, h5py.h5g.GroupID):
                if not h5py.h5a.exists(image, b"identifier"):
                    return None
                attribute = h5py.h5a.open(image, b"identifier")
                kind = attribute.get_type()
                scalar = attribute.get_space().get_simple_extent_type() == h5py.h5s.SCALAR
                if scalar and isinstance(kind, h5py.h5t.TypeStringID) and kind.is_variable_str():
                    text = np.empty((), dtype=object)
                    attribute.read(text, mtype=_VARIABLE_TEXT)  # bytes, whatever the character set
                    return bytes(text[()]).decode("utf-8")
    except (KeyError, OSError, RuntimeError, ValueError):  # missing, damaged, not UTF-8: named below
        pass
    image = _child(group, f"fli_{position}", label, h5py.Group)
    if "identifier" not in _attribute_names(image, label):
        return None
    return _text_attr(image, "identifier", label)


def _text_attr(group: h5py.Group, key: str, label: str) -> str:
    value = _attribute(group, key, label)
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value[()]
    if isinstance(value, str):
        return value
    where = f"{_at(label, group)} attribute {key!r}"  # only here: a node's name costs an HDF5 call
    if isinstance(value, (bytes, np.bytes_)):  # older writers stored bytes
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            raise FormatError(f"{where} is no UTF-8 text: {value!r}") from None
    raise FormatError(f"{where} must be text, but holds {type(value).__name__}")


def _read_meta(
    group: h5py.Group, label: str, unknown: list[tuple[str, str]], problems: list[str] | None = None
) -> dict[str, MetaValue]:
    """The meta data of an image; attributes beyond the 16 keys go to ``unknown``, and a bad value
    raises FormatError, or with ``problems`` (for the ``check`` command) is listed there."""
    meta: dict[str, MetaValue] = {}
    for key in _attribute_names(group, label):
        try:
            if key not in META_KEYS:
                unknown.append((key, _at(label, group)))
            elif key in TEXT_KEYS:
                meta[key] = _text_attr(group, key, label)
            else:
                value = np.asarray(_attribute(group, key, label))
                numbers = value.dtype.kind in "iuf"
                if numbers and key in SEQUENCE_KEYS:
                    meta[key] = tuple(float(v) for v in value.ravel())
                elif numbers and value.size == 1 and value.ndim <= 1:
                    meta[key] = float(value.reshape(()))
                else:  # the node's name only here: it costs an HDF5 call
                    expected = "be one number" if numbers else "hold numbers"
                    found = f"has shape {value.shape}" if numbers else f"holds {value.dtype}"
                    where = f"{_at(label, group)} attribute {key!r}"
                    raise FormatError(f"{where} must {expected}, but {found}")
        except FormatError as exc:
            if problems is None:
                raise
            problems.append(str(exc))
    return meta


def _warn_unknown(unknown: list[tuple[str, str]]) -> None:
    """One warning per call, naming each unknown attribute and where it is."""
    if not unknown:
        return
    places: dict[str, list[str]] = {}
    for key, label in unknown:
        places.setdefault(key, []).append(label)
    parts = [
        f"{key!r} on {', '.join(labels[:3])}"
        + (f" and {len(labels) - 3} more" if len(labels) > 3 else "")
        for key, labels in places.items()
    ]
    message = "left out attributes that are no meta data of the layout (a copy drops them): "
    level = 2
    frame = sys._getframe(1)
    while frame.f_code.co_filename == __file__ and frame.f_back:  # point at the caller's line
        level += 1
        frame = frame.f_back
    warnings.warn(UnknownMetaWarning(message + "; ".join(parts)), stacklevel=level)


# 5. chunks: HDF5's filters and the ordered thread pipeline ---------------------------------------------

# HDF5 runs its filters in the calling thread, one chunk at a time; encoding and decoding the chunks
# ourselves (bytes HDF5 reads and checks as its own) lets every core work, in the order HDF5 needs them.

_FILTER_DEFLATE = 1  # HDF5's filter ids
_FILTER_SHUFFLE = 2
_FILTER_FLETCHER32 = 3
_CHUNK_BYTES = 1 << 20  # row blocks of at most 1 MiB: every core works on an image of a few MiB
_TINY_CHUNK_BYTES = 8 << 10  # other writers' chunks below this go through HDF5's own reader
_MAX_CHUNK_BYTES = 2**32 - 2**24  # HDF5 refuses chunks of 4 GiB; keep deflate's margin
_FLETCHER_BLOCK = 1 << 20


@functools.cache
def _fletcher_weights() -> npt.NDArray[np.uint64]:
    """Each word's count of additions to the second sum in a block: 8 MiB, made on first use
    rather than at import, which a project vendoring the module pays whether it writes or not."""
    return np.arange(_FLETCHER_BLOCK, 0, -1, dtype=np.uint64)


def _zlib() -> ModuleType:
    """The deflate implementation: zlib-ng when installed, else the stdlib."""
    return _zlib_ng if _zlib_ng is not None else zlib


def _fletcher32(data: bytes | memoryview) -> int:
    """HDF5's H5_checksum_fletcher32 over big-endian 16-bit words, blockwise. Its sums fold mod 65535
    with end-around carry: 0 only when every word is 0, else ``(s - 1) % 65535 + 1`` of exact ``s``."""
    words = np.frombuffer(data, dtype=">u2", count=len(data) // 2)
    blocks = [words[start : start + _FLETCHER_BLOCK] for start in range(0, len(words), _FLETCHER_BLOCK)]
    if len(data) % 2:  # HDF5 takes an odd last byte as the high byte of one more word
        blocks.append(np.array([data[-1] << 8]))
    sum1 = sum2 = 0  # the exact sums, as Python ints
    for block in blocks:
        wide = block.astype(np.uint64)
        # each word is added to sum2 once for every word from it to the end
        sum2 += len(wide) * sum1 + int(np.dot(wide, _fletcher_weights()[_FLETCHER_BLOCK - len(wide) :]))
        sum1 += int(wide.sum())
    return ((sum2 - 1) % 65535 + 1) << 16 | ((sum1 - 1) % 65535 + 1) if sum1 else 0


def _encode_chunk(block: npt.NDArray[Any], dtype: np.dtype[Any], options: _Options) -> bytes:
    """shuffle -> deflate -> fletcher32, as HDF5 would; edge chunks come padded."""
    data = np.ascontiguousarray(block, dtype=dtype).reshape(-1).view(np.uint8)
    if options.shuffle and dtype.itemsize > 1:
        data = np.ascontiguousarray(data.reshape(-1, dtype.itemsize).T).reshape(-1)
    if options.compress:
        backend = _zlib()
        # level None: run-length deflate, on shuffled images faster and smaller than level 1
        strategy = backend.Z_RLE if options.level is None else backend.Z_DEFAULT_STRATEGY
        encoder = backend.compressobj(options.level or 1, backend.DEFLATED, 15, 8, strategy)
        stored = encoder.compress(data) + encoder.flush()
    else:
        stored = data.tobytes()
    return bytes(stored) + _fletcher32(stored).to_bytes(4, "little")


def _decode_chunk(
    label: str,
    stored: bytes,
    mask: int,
    codes: tuple[int, ...],
    dtype: np.dtype[Any],
    chunk: Any,
    out: Any,
) -> None:
    """Undo the filters of one stored chunk and write it into ``out``, its part of the image (in
    ``dtype`` or, cast as numpy casts, in another one that the caller asked for)."""
    expected = chunk[0] * chunk[1] * dtype.itemsize
    data: Any = stored
    for position, code in reversed(list(enumerate(codes))):
        skipped = mask & (1 << position)
        # HDF5 skips only an optional filter that failed on a chunk; shuffle cannot fail and fletcher32
        # is mandatory, so such a mark means the (unchecksummed) chunk index is damaged
        if skipped and code != _FILTER_DEFLATE:
            raise FormatError(
                f"{label}: a chunk is marked as stored without a filter that cannot be skipped"
            )
        if code == _FILTER_FLETCHER32:
            checksum = bytes(data[-4:])
            data = memoryview(data)[:-4]
            if checksum != _fletcher32(data).to_bytes(4, "little"):
                raise FormatError(
                    f"{label}: the fletcher32 checksum of a chunk does not match (the file is damaged)"
                )
        elif code == _FILTER_DEFLATE and not skipped:
            try:
                data = _zlib().decompress(data, 15, expected)
            except Exception as exc:  # zlib.error, or zlib-ng's own error class
                raise FormatError(
                    f"{label}: a chunk does not inflate ({exc}); the file is damaged"
                ) from None
    if len(data) != expected:
        raise FormatError(
            f"{label}: a chunk holds {len(data)} bytes, expected {expected}; the file is damaged"
        )
    rows, cols = out.shape
    if _FILTER_SHUFFLE not in codes or dtype.itemsize == 1:
        out[...] = np.frombuffer(data, dtype=dtype).reshape(chunk)[:rows, :cols]
        return
    # unshuffle straight into the image, one strided copy per byte plane (3x a transposed copy); numpy
    # < 1.23 views only a contiguous array as bytes, so a strided or cast part goes through a copy
    native = dtype.newbyteorder("=")
    whole = out if out.flags.c_contiguous and out.dtype == native else np.empty(out.shape, native)
    target = whole.view(np.uint8)
    planes = np.frombuffer(data, dtype=np.uint8).reshape(dtype.itemsize, *chunk)[:, :rows, :cols]
    for byte, plane in enumerate(planes):
        place = byte if dtype.isnative else dtype.itemsize - 1 - byte  # stored in the other byte order
        target[:, place :: dtype.itemsize] = plane
    if whole is not out:
        out[...] = whole


_Tag = TypeVar("_Tag")


def _in_order(
    workers: int, jobs: Iterable[tuple[Callable[[], Any], _Tag]]
) -> Iterator[tuple[Any, _Tag]]:
    """Run the jobs on ``workers`` threads, a bounded window ahead; yield (result, tag) in job order.
    ``jobs`` is advanced in the calling thread, so it may call h5py; the rest is cancelled on exit."""
    if workers == 1:
        yield from ((function(), tag) for function, tag in jobs)
        return
    pending: collections.deque[tuple[concurrent.futures.Future[Any], _Tag]] = collections.deque()
    with concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="flimage_io") as pool:
        try:
            for function, tag in jobs:
                pending.append((pool.submit(function), tag))
                time.sleep(0)  # lets a worker that waits for the GIL take it now, not in 5 ms
                while len(pending) > 2 * workers or (pending and pending[0][0].done()):
                    yield pending[0][0].result(), pending.popleft()[1]
            while pending:
                yield pending[0][0].result(), pending.popleft()[1]
        finally:  # no name may keep a failed future: its error's traceback would close a reference cycle
            while pending:
                pending.popleft()[0].cancel()


# 6. storing and loading images -------------------------------------------------------------------------

# Images to and from their HDF5 groups through that pipeline: this thread makes the HDF5 calls, the
# workers the codec work; a streaming append commits between runs of images.


def _numbered_unique(
    group: h5py.Group,
    label: str,
    start: int,
    first: list[_CheckedImage],
    images: Iterator[Any],
    options: _Options,
) -> Iterator[tuple[str, _CheckedImage]]:
    """("fli_N", checked image) for a series, with identifiers kept unique."""
    seen: dict[str, int] | None = None  # identifier -> position, read lazily when appending
    for offset, image in enumerate(itertools.chain(first, images)):
        image_label = f"series['images'][{offset}]"
        if not isinstance(image, _CheckedImage):
            image = _check_image(image, options.dtype, image_label)
        identifier = image.meta.get("identifier")
        if isinstance(identifier, str):
            if seen is None:
                seen = _identifiers(group, label, start)
            if identifier in seen:
                used = f"fli_{seen[identifier]}" if seen[identifier] >= 0 else "several images"
                raise ValueError(f"{image_label} has identifier {identifier!r}, already used by {used}")
            seen[identifier] = start + offset
        yield f"fli_{start + offset}", image


# The attributes with which HDFView shows a dataset as a grayscale picture: every writer (ours,
# flimage) sets them, so the readers leave them out without a warning.
_IMAGE_ATTRIBUTES = types.MappingProxyType(
    {"CLASS": "IMAGE", "IMAGE_VERSION": "1.2", "IMAGE_SUBCLASS": "IMAGE_GRAYSCALE"}
)


def _store_images(
    writing: _Writing,
    images: Iterable[tuple[str | None, _CheckedImage]],
    options: _Options,
    commit_every: float | None = None,
    ready: Callable[[float], bool] | None = None,
) -> None:
    """Store the images; with ``commit_every``, commit those stored so far every that many seconds. A
    commit needs every image before it whole and none after it begun: the images go in runs, each
    stored to its end. ``ready`` (see _Feed) ends a run when the camera is quiet at the commit time."""
    images = iter(images)
    if commit_every is None:
        _store_run(writing.group, images, options, writing.check)
        return
    next_commit = time.monotonic()  # the first image at once: the file shows the acquisition began
    uncommitted = False  # images stored since the last commit
    exhausted = False

    def run() -> Iterator[tuple[str | None, _CheckedImage]]:
        nonlocal uncommitted, exhausted
        # a camera quiet at the commit time ends the run: what it gave is committed
        while not uncommitted or ready is None or ready(next_commit - time.monotonic()):
            item = next(images, None)
            if item is None:
                exhausted = True
                return
            yield item
            uncommitted = True  # asked for the next item: this one is on its way into the file
            if time.monotonic() >= next_commit:
                return

    while True:
        _store_run(writing.group, run(), options, writing.check)
        if exhausted:
            return  # the end of the call commits
        if writing.commit():
            uncommitted = False
            next_commit = time.monotonic() + commit_every
        else:  # readers hold the file: try again soon, the turnstile open meanwhile
            next_commit = time.monotonic() + _ReaderGate._ROUND / 2


class _Feed(threading.Thread):
    """The caller's images, taken and checked (copied: a camera may reuse its buffer) in a thread of
    their own, so that a streaming append commits while the generator waits for its camera; at most
    ``_AHEAD`` copies wait. An invalid image raises its error after the images before it; the
    generator's own error waits in ``failure`` while the call commits what came before. A failed
    call leaves this thread in the generator until the camera's next image, which it drops."""

    _AHEAD = 2

    def __init__(self, images: Iterator[Any], storage: np.dtype[Any] | None, start: int) -> None:
        super().__init__(name="flimage_io feed", daemon=True)
        self.caller = threading.get_ident()  # reads by this thread are reads by the appending call
        self.failure: BaseException | None = None  # what the generator raised
        self._images = images
        self._storage = storage
        self._start = start
        self._taken: collections.deque[_CheckedImage] = collections.deque()
        self._changed = threading.Condition()
        self._ended = False  # the generator ended or raised
        self._error: BaseException | None = None  # an invalid image's
        self._stopped = False  # the call is over

    def run(self) -> None:
        try:
            for offset in itertools.count(self._start):
                try:
                    image = next(self._images)
                except StopIteration:
                    return
                except BaseException as exc:  # the camera's: the images before it are kept
                    self.failure = exc
                    return
                checked = _check_image(image, self._storage, f"series['images'][{offset}]")
                with self._changed:
                    self._changed.wait_for(lambda: len(self._taken) < self._AHEAD or self._stopped)
                    if self._stopped:
                        return
                    self._taken.append(checked)
                    self._changed.notify_all()
        except BaseException as exc:  # an invalid image: the caller's to see, unchanged
            self._error = exc  # read once _ended is set, under the lock
        finally:
            with self._changed:
                self._ended = True
                self._changed.notify_all()

    def ready(self, timeout: float) -> bool:
        """Whether the next image (or the end) is here, waiting up to ``timeout`` seconds for it."""
        with self._changed:
            return bool(self._changed.wait_for(lambda: self._taken or self._ended, max(0.0, timeout)))

    def __iter__(self) -> Iterator[_CheckedImage]:
        while True:
            with self._changed:
                self._changed.wait_for(lambda: self._taken or self._ended)
                if not self._taken:
                    error = self._error  # no cycle through this thread's frames
                    self._error = None
                    if error is not None:
                        raise error
                    return
                checked = self._taken.popleft()
                self._changed.notify_all()
            yield checked

    def stop(self) -> None:
        with self._changed:
            self._stopped = True
            self._changed.notify_all()


def _store_run(
    group: h5py.Group,
    images: Iterable[tuple[str | None, _CheckedImage]],
    options: _Options,
    check: Callable[[], None],
) -> None:
    """Encode chunks on the workers while this thread, the only one calling h5py, creates the groups
    and datasets (a few chunks ahead) and stores the finished chunks in order."""
    # the filters HDF5 records for each dataset: readers decode with them, we encode ourselves
    filters: dict[str, Any] = {"shuffle": options.shuffle, "fletcher32": True}
    if options.compress:
        filters.update(compression="gzip", compression_opts=options.level or 1)

    def encode_jobs() -> Iterator[tuple[Callable[[], bytes], tuple[Any, int]]]:
        for name, image in images:
            image_group = group if name is None else group.create_group(name)
            for key, value in image.meta.items():
                image_group.attrs[key] = value
            fluorescence = image_group.create_group("fluorescence")
            background = fluorescence.create_group("bg_data")
            for parent, key, array in [
                (fluorescence, "raw", image.raw),
                *((background, key, array) for key, array in image.bg_data.items()),
            ]:
                rows = min(array.shape[0], max(1, _CHUNK_BYTES // array[0].nbytes))
                chunks = (rows, array.shape[1])
                dataset = parent.create_dataset(key, array.shape, array.dtype, chunks=chunks, **filters)
                for key, value in _IMAGE_ATTRIBUTES.items():
                    dataset.attrs.create(key, np.bytes_(value))
                for start in range(0, array.shape[0], rows):
                    block = array[start : start + rows]
                    if len(block) < rows:  # HDF5 stores edge chunks at full size
                        block = np.pad(block, ((0, rows - len(block)), (0, 0)))
                    yield functools.partial(_encode_chunk, block, array.dtype, options), (dataset, start)

    for stored, (dataset, start) in _in_order(options.workers, encode_jobs()):
        dataset.id.write_direct_chunk((start, 0), stored, 0)
        check()  # a full disk stops the stream here


def _prepare_append(group: h5py.Group, label: str, identifier: str | None) -> int:
    """Check that a group holds a series to append to; return its length."""
    with _Reading(label):
        empty = not len(group)
    if not empty and _layout_of(group, label) == "image":
        raise FormatError(f"{label} holds an FLImage, not an FLSeries: cannot append images to it")
    count = 0 if empty else _series_length(group, label)
    if identifier is not None and "identifier" in _attribute_names(group, label):
        existing = _text_attr(group, "identifier", label)
        if existing != identifier:
            raise ValueError(
                f"series['identifier'] is {identifier!r}, but the series in {label} is "
                f"{existing!r}; pass None to keep it"
            )
    return count


def _load_images(
    group: h5py.Group,
    label: str,
    names: Sequence[str | None],
    workers: int,
    unknown: list[tuple[str, str]],
    problems: list[str] | None = None,
) -> Iterator[Image]:
    """Read images (None: ``group`` itself) in order; chunks decode on the workers
    while this thread reads the next stored chunks and meta data."""

    def decode_jobs() -> Iterator[tuple[Callable[[], None], Image | None]]:
        for name in names:
            image_group = group if name is None else _child(group, name, label, h5py.Group)
            meta = _read_meta(image_group, label, unknown, problems)
            fluorescence = _child(image_group, "fluorescence", label, h5py.Group)
            raw_node = _child(fluorescence, "raw", label, h5py.Dataset)
            raw, jobs = _dataset_jobs(raw_node, label, None)
            bg_data: dict[str, npt.NDArray[Any]] = {}
            nodes: list[h5py.Group | h5py.Dataset] = [fluorescence, raw_node]
            if _has(fluorescence, "bg_data", label):
                background = _child(fluorescence, "bg_data", label, h5py.Group)
                nodes.append(background)
                for key in _names(background, label):
                    node = _child(background, key, label, h5py.Dataset)
                    bg_data[key], more = _dataset_jobs(node, label, raw.shape)
                    jobs += more
                    nodes.append(node)
            # the dict holds none of their attributes but HDFView's, which writers add
            for node in nodes:
                kept = _IMAGE_ATTRIBUTES if isinstance(node, h5py.Dataset) else ()
                keys = _attribute_names(node, label, kept)
                unknown.extend((key, _at(label, node)) for key in keys if key not in kept)
            jobs = jobs or [lambda: None]  # the image is done when its last job is
            yield from ((job, None) for job in jobs[:-1])
            yield jobs[-1], {"raw": raw, "bg_data": bg_data, "meta": meta}

    for _, image in _in_order(workers, decode_jobs()):
        if image is not None:
            yield image


class _Stored(NamedTuple):
    """What the readers need of a dataset before its data: read once, through ``_Reading``."""

    label: str  # the dataset's place
    dtype: np.dtype[Any]
    shape: tuple[int, ...]


def _check_dataset(dataset: h5py.Dataset, label: str, shape: tuple[int, ...] | None) -> _Stored:
    """Refuse a dataset that holds no image (``shape=None``: a raw one) or no background of ``shape``."""
    with _Reading(label):
        stored = _Stored(_at(label, dataset), dataset.dtype, dataset.shape)
    found = stored.shape
    if not _storable(stored.dtype):
        raise FormatError(
            f"{stored.label} must hold real numbers or bools, but has dtype {stored.dtype}"
        )
    if shape is None and (found is None or len(found) != 2 or 0 in found):
        raise FormatError(f"{stored.label} must be a non-empty 2-D image, but has shape {found}")
    if shape is not None and found != shape:
        raise FormatError(f"{stored.label} has shape {found}, but raw has shape {shape}")
    return stored


def _dataset_jobs(
    dataset: h5py.Dataset, label: str, shape: tuple[int, ...] | None, out: npt.NDArray[Any] | None = None
) -> tuple[npt.NDArray[Any], list[Callable[[], None]]]:
    """A dataset's array and the jobs that decode its chunks into it (none when HDF5 read it); with
    ``out``, of the dataset's shape, into that array, cast to its dtype as numpy casts. Storage never
    written or outside the file is an error: our writers store every chunk; fill is no data."""
    label, dtype, found = _check_dataset(dataset, label, shape)  # the dataset's label from here on
    native = dtype.newbyteorder("=")
    with _Reading(label):
        plist = dataset.id.get_create_plist()
        layout = plist.get_layout()
        external = plist.get_external_count()
        chunk = dataset.chunks
        written = dataset.id.get_num_chunks() if layout == h5py.h5d.CHUNKED else 0
        codes = tuple(plist.get_filter(i)[0] for i in range(plist.get_nfilters()))
        # our decoder takes the stored bytes as numpy's dtype; odd HDF5 types (12-bit words,
        # other float formats) need HDF5's conversion
        plain = dataset.id.get_type().equal(h5py.h5t.py_create(dtype))
        unwritten = layout == h5py.h5d.CONTIGUOUS and dataset.id.get_offset() is None
    if layout == h5py.h5d.VIRTUAL:
        raise FormatError(f"{label} is a virtual dataset, which reads other files; flimage_io does not")
    if external:
        raise FormatError(f"{label} keeps its data in external files, which flimage_io does not read")
    if unwritten:
        raise FormatError(f"{label} was never written (it has no storage)")
    if layout == h5py.h5d.CHUNKED:
        # every check before the array is allocated: a small file may declare a huge image
        starts = [range(0, size, step) for size, step in zip(found, chunk)]
        total = math.prod(len(r) for r in starts)
        if written != total:
            with _Reading(label):
                lookup = dataset.id.get_chunk_info_by_coord  # not get_chunk_info(i): O(n) a call
                missing = next(
                    (o for o in itertools.product(*starts) if lookup(o).byte_offset is None), None
                )
            raise FormatError(
                f"{label}: the chunk at {missing} was never written ({total - written} of its {total} "
                "chunks are missing)"
                if missing is not None
                else f"{label} lists {written} chunks, but has room for {total}; the file is damaged"
            )
        # chunks of a few KiB cost more to hand to a worker than to decode: HDF5 reads them faster
        tiny = total > 1 and math.prod(chunk) * dtype.itemsize < _TINY_CHUNK_BYTES
        if plain and not tiny and set(codes) <= {_FILTER_DEFLATE, _FILTER_SHUFFLE, _FILTER_FLETCHER32}:
            out = np.empty(found, dtype=native) if out is None else out
            jobs: list[Callable[[], None]] = []
            for offset in itertools.product(*starts):
                try:
                    mask, stored = dataset.id.read_direct_chunk(offset)
                except (OSError, RuntimeError, KeyError, ValueError) as exc:
                    raise FormatError(
                        f"{label}: the chunk at {offset} was never written or is damaged ({exc})"
                    ) from None
                part = out[tuple(slice(o, o + c) for o, c in zip(offset, chunk))]
                jobs.append(
                    functools.partial(_decode_chunk, label, stored, mask, codes, dtype, chunk, part)
                )
            return out, jobs
    # another dtype is cast by numpy from a copy of the image, not by HDF5 (whose rules differ)
    read = np.empty(found, dtype=native) if out is None or out.dtype != native else out
    try:  # lzf, szip, contiguous, compact: HDF5 decodes; read_direct converts byte order right
        dataset.read_direct(read)
    except (OSError, RuntimeError, ValueError) as exc:
        raise FormatError(f"{label} cannot be read ({exc}); the file is damaged") from None
    if out is None:
        return read, []
    out[...] = read
    return out, []


def _load_stack(
    group: h5py.Group, label: str, positions: Sequence[int], workers: int, dtype: npt.DTypeLike | None
) -> npt.NDArray[Any]:
    """The raw images at ``positions`` as one (frames, rows, columns) array, of their dtype or ``dtype``,
    each decoded straight into its part; an image unlike the first raises ValueError naming both."""
    if not positions:
        return np.empty((0, 0, 0), dtype=np.float64 if dtype is None else dtype)
    first_raw = _raw_of(group, label, positions[0])
    first = _check_dataset(first_raw, label, None)  # before the array is allocated
    kind = first.dtype.newbyteorder("=")  # the byte order a file stores does not matter
    out = np.empty((len(positions), *first.shape), dtype=kind if dtype is None else dtype)

    def decode_jobs() -> Iterator[tuple[Callable[[], None], None]]:
        for slot, position in enumerate(positions):
            raw = first_raw if slot == 0 else _raw_of(group, label, position)
            with _Reading(label):
                shape = raw.shape
                stored = raw.dtype.newbyteorder("=")
            if (shape, stored) != (first.shape, kind):
                odd = _image_name(group, label, slot, position)
                raise ValueError(
                    f"{label}: {odd} has shape {shape} and dtype {stored}, but "
                    f"{_image_name(group, label, 0, positions[0])} has shape {first.shape} and dtype "
                    f"{kind}; one (frames, rows, columns) array needs images of one shape and dtype: "
                    "take them one by one"
                )
            yield from ((job, None) for job in _dataset_jobs(raw, label, None, out[slot])[1])

    for _ in _in_order(workers, decode_jobs()):
        pass
    return out


def _raw_of(group: h5py.Group, label: str, position: int) -> h5py.Dataset:
    """The raw dataset of image ``fli_{position}`` of a series, unread."""
    image = _child(group, f"fli_{position}", label, h5py.Group)
    return _child(_child(image, "fluorescence", label, h5py.Group), "raw", label, h5py.Dataset)


def _image_name(group: h5py.Group, label: str, slot: int, position: int) -> str:
    """'image 3 (fli_7, identifier 'frame 7')': an image of a selection, for a message."""
    try:
        identifier = _identifier_of(group, label, position)
    except FormatError:  # the message is about something else
        identifier = None
    named = "" if identifier is None else f", identifier {identifier!r}"
    return f"image {slot} (fli_{position}{named})"


# 7. lazy series ----------------------------------------------------------------------------------------

# A lazy series of a path reads the file anew at each access, when the path may name another file
# (write_series writes anew, os.replace moves one there) whose pixels would go with the old meta data.
# So each open compares the file's (device, inode) with those of the handle read_series read through
# (an append writes in place and keeps both); the device only within the same running kernel (a pickle
# may go to another host or outlive a reboot). A freed inode may be reused and a file written over in
# place (shutil.copyfile, h5py's "w"), so the series root must keep its identifier (if any; an append
# may give it one) and an image's pixels the meta data it was read with. Missed: a file written over or
# on a reused inode that keeps both. What was read before a change is kept as read.


@functools.cache
def _kernel() -> str:
    """The boot id of the running kernel (Linux), within which device numbers hold; '' elsewhere."""
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as source:
            return source.read().strip()
    except OSError:
        return ""


class _FileIdentity(NamedTuple):
    """The file that a lazy series of a path read: see above."""

    kernel: str
    device: int
    inode: int
    identifier: str | None  # the series root's

    @classmethod
    def of(cls, info: os.stat_result, identifier: str | None) -> _FileIdentity:
        return cls(_kernel(), info.st_dev, info.st_ino, identifier)

    def other(self, info: os.stat_result) -> bool:
        """Whether ``info`` is the stat of another file."""
        here = bool(self.kernel) and self.kernel == _kernel()
        return info.st_ino != self.inode or (here and info.st_dev != self.device)


class _ReadAhead:
    """Which images to read along with the one asked for: while visits go in order (either way), twice
    as many at each read, up to ``most``; at random, that image alone, so that it costs what read_image
    does. Meta data of a series of 10,000 images in order take 50 opens, not 10,000."""

    def __init__(self, most: int) -> None:
        self._most = most
        self._last = -2  # the slot visited last
        self._run = 0  # visits in order up to it

    def slots(self, slot: int, count: int) -> range:
        """Note a visit of ``slot`` (of ``count``); the slots to read if it is not read yet."""
        step = slot - self._last
        self._last = slot
        self._run = self._run + 1 if step in (1, -1) else 1
        size = min(self._run, self._most)
        if step == -1:
            return range(max(slot - size + 1, 0), slot + 1)
        return range(slot, min(slot + size, count))


class _LazyImage(Mapping[str, Any]):
    """One image of a lazy series, read on first access: meta data alone, or with the arrays (in
    one open, as read_image reads it) when those are asked for first."""

    def __init__(self, series: _LazyImages, slot: int) -> None:
        self._series = series
        self._slot = slot
        self._meta: dict[str, MetaValue] | None = None  # what the caller gets, and may change
        self._read_with: dict[str, MetaValue] | None = None  # the meta data as read
        self._arrays: Image | None = None

    def __repr__(self) -> str:  # without reading pixels
        self._meta_data()
        identifier = (self._read_with or {}).get("identifier")
        named = "" if identifier is None else f", identifier {identifier!r}"
        where = f"fli_{self._series._positions[self._slot]}{named}"
        return f"<lazy image {self._slot} of {self._series._label()}: {where}>"

    def __getitem__(self, key: str) -> Any:
        if key == "meta":
            return self._meta_data()
        if key not in ("raw", "bg_data"):
            raise KeyError(key)
        if self._arrays is None:
            self._arrays = self._series._pixels(self._slot, self._read_with)
            if self._read_with is None:  # read with the arrays: nothing to compare them with
                self._read_with = dict(self._arrays["meta"])
                self._meta = self._arrays["meta"]
        return self._arrays[key]  # type: ignore[literal-required]

    def _meta_data(self) -> dict[str, MetaValue]:
        if self._meta is None:
            self._meta = self._series._meta_of(self._slot)
            self._read_with = dict(self._meta)
        return self._meta

    def __contains__(self, key: object) -> bool:  # without reading pixels
        return key in ("raw", "bg_data", "meta")

    def __iter__(self) -> Iterator[str]:
        return iter(("raw", "bg_data", "meta"))

    def __len__(self) -> int:
        return 3


class _LazyImages(Sequence[Image]):
    """The images of a series, read on access with no file open in between: meta data a block at a time
    while visited in order (the last few hundred kept), pixels for the next few (bounded memory);
    ``np.asarray`` reads the raw images into one (frames, rows, columns) array."""

    _META_BLOCK = 256
    _META_KEPT = 2 * _META_BLOCK

    def __init__(
        self, source: Target, positions: Sequence[int], workers: int, known: _FileIdentity | None = None
    ) -> None:
        # a path is made absolute now: a later os.chdir must not make it name another file
        self._source = os.path.abspath(os.fsdecode(source)) if isinstance(source, _PATHS) else source
        self._positions = list(positions)
        self._workers = workers
        self._known = known  # None: not a path, nothing to compare
        self._lock = threading.Lock()
        _LAZY_SERIES.add(self)
        self._metas: collections.OrderedDict[int, dict[str, MetaValue]] = collections.OrderedDict()
        self._meta_visits = _ReadAhead(self._META_BLOCK)
        self._warned: set[str] = set()  # attribute names left out: each is warned about once
        self._ahead: dict[int, Image] = {}
        self._pixel_visits = _ReadAhead(2 * workers + 2)

    def __reduce__(self) -> tuple[Any, ...]:  # pickled without the lock and what was read
        return _LazyImages, (self._source, self._positions, self._workers, self._known)

    def __repr__(self) -> str:
        """The file, the number of images and the first one's shape and dtype, read without pixels."""
        count = len(self)
        text = f"{count} {'image' if count == 1 else 'images'}"
        if self._positions != list(range(count)):
            text += " (a selection)"
        if count:
            try:
                with self._open() as (group, label):
                    raw = _raw_of(group, label, self._positions[0])
                    text += f", the first {raw.shape} {raw.dtype.newbyteorder('=')}"
            except Exception as exc:  # a repr shows what it can
                text += f" (the first cannot be read now: {type(exc).__name__})"
        return f"<lazy series {self._label()}: {text}>"

    def __len__(self) -> int:
        return len(self._positions)

    def __iter__(self) -> Iterator[Image]:  # no frame of ours between the caller and a warning
        return map(self.__getitem__, range(len(self)))

    @overload
    def __getitem__(self, index: int | str) -> Image: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[Image]: ...

    def __getitem__(self, index: int | str | slice) -> Image | Sequence[Image]:
        if isinstance(index, slice):
            return _LazyImages(self._source, self._positions[index], self._workers, self._known)
        if isinstance(index, str):
            slot = self._slot_of(index)
        elif isinstance(index, numbers.Integral) and not isinstance(index, (bool, np.bool_)):
            slot = int(index) + len(self) if index < 0 else int(index)
            if not 0 <= slot < len(self):
                count = f"the lazy series has {len(self)} images"
                message = f"{self._label()}: {count}; index {index} is out of range"
                raise ImageNotFoundError(message)
        else:
            raise TypeError(
                "images are indexed by position (int), identifier (str) or slice, "
                f"not {type(index).__name__}"
            )
        return cast(Image, _LazyImage(self, slot))  # a read-only mapping with an Image's keys

    def __array__(
        self, dtype: npt.DTypeLike | None = None, copy: bool | None = None
    ) -> npt.NDArray[Any]:
        """The raw images as one (frames, rows, columns) array, for ``np.asarray(images)``: each frame
        decoded straight into its part, so that the array is the only allocation of its size."""
        if copy is False:  # numpy 2 asks for this error when no copy is wanted but one is needed
            raise ValueError(
                "the images of a lazy series are read from the file into a new array, which copy=False "
                "forbids: leave copy out"
            )
        with self._open() as (group, label):
            return _load_stack(group, label, self._positions, self._workers, dtype)

    def _label(self) -> str:
        """The file (and group) as _open_read names it, without opening it."""
        source = self._source
        if isinstance(source, h5py.Group):
            return _at(source.file.filename, source) if source.id.valid else "a closed h5py group"
        return os.fsdecode(source) if isinstance(source, _PATHS) else _fileobj_name(source)

    def _slot_of(self, identifier: str) -> int:
        with self._open() as (group, label):
            position = _select(group, label, [str(identifier)])[0]
        try:
            return self._positions.index(position)
        except ValueError:
            message = f"{label}: identifier {identifier!r} is fli_{position}, which is not among the "
            raise ImageNotFoundError(message + f"{len(self)} images of this lazy series") from None

    def _meta_of(self, slot: int) -> dict[str, MetaValue]:
        with self._lock:
            slots = self._meta_visits.slots(slot, len(self))
            if slot not in self._metas:
                try:
                    read = self._read_metas([self._positions[s] for s in slots])
                except FormatError:  # a damaged image in the block: read only this one
                    if len(slots) == 1:
                        raise
                    slots = range(slot, slot + 1)
                    read = self._read_metas([self._positions[slot]])
                self._metas.update(zip(slots, read))
                while len(self._metas) > self._META_KEPT:
                    self._metas.popitem(last=False)
            self._metas.move_to_end(slot)
            return dict(self._metas[slot])

    def _read_metas(self, positions: Sequence[int]) -> list[dict[str, MetaValue]]:
        unknown: list[tuple[str, str]] = []
        with self._open() as (group, label):
            metas = [
                _read_meta(_child(group, f"fli_{p}", label, h5py.Group), label, unknown)
                for p in positions
            ]
        self._warn_once(unknown)
        return metas

    def _warn_once(self, unknown: list[tuple[str, str]]) -> None:
        """Warn about the attributes not yet warned about: a loop warns once, not at every block."""
        _warn_unknown([(key, label) for key, label in unknown if key not in self._warned])
        self._warned.update(key for key, _ in unknown)

    def _pixels(self, slot: int, meta: dict[str, MetaValue] | None) -> Image:
        """Image ``slot``; for a path, refused if the file now gives it other meta data than ``meta``,
        those it was read with (None: not read yet)."""
        with self._lock:
            slots = self._pixel_visits.slots(slot, len(self))
            if slot not in self._ahead:
                try:
                    self._ahead = self._read_pixels(slots)
                except FormatError:  # perhaps a damaged image ahead: read only this one
                    if len(slots) == 1:
                        raise
                    self._ahead = self._read_pixels(range(slot, slot + 1))
            image = self._ahead.pop(slot)
        # and by repr, as NaN != NaN: meta data holding NaN equal themselves only so
        changed = meta is not None and image["meta"] != meta and repr(image["meta"]) != repr(meta)
        if self._known is not None and changed:
            raise self._changed(f"fli_{self._positions[slot]} has other meta data now")
        return image

    def _read_pixels(self, slots: range) -> dict[int, Image]:
        names = [f"fli_{self._positions[slot]}" for slot in slots]
        unknown: list[tuple[str, str]] = []
        with self._open() as (group, label):
            read = list(_load_images(group, label, names, self._workers, unknown))
        self._warn_once(unknown)
        return dict(zip(slots, read))

    @contextlib.contextmanager
    def _open(self) -> Iterator[tuple[h5py.Group, str]]:
        """_open_read of the source, refusing a file other than the one read_series read."""
        with _open_read(self._source, self._check_file) as (group, label):
            known = self._known
            if known is not None and known.identifier is not None:
                keys = _attribute_names(group, label)
                now = _text_attr(group, "identifier", label) if "identifier" in keys else None
                if now != known.identifier:
                    raise self._changed(
                        f"its series identifier is now {now!r}, not {known.identifier!r}"
                    )
            yield group, label

    def _check_file(self, info: os.stat_result) -> None:
        if self._known is not None and self._known.other(info):
            raise self._changed("another file has taken its place")

    def _changed(self, why: str) -> FormatError:
        return FormatError(
            f"{self._label()} changed since read_series(..., lazy=True) read it ({why}), and its "
            "images would mix the two files: read it again with read_series"
        )


# what Python's own messages call them ("'lazy series' object has no attribute 'shape'"); pickle finds
# them by their qualified names, which stay
_LazyImages.__name__ = "lazy series"
_LazyImage.__name__ = "lazy image"


# 8. check: everything the readers and flimage would refuse ---------------------------------------------

# A scientist handed a file wants to know before an analysis whether it reads back exactly and opens in
# flimage: check reads every image as the readers do and adds what flimage needs beyond that, naming
# each problem's place. The file is locked while it is open: a check opens it for a block of images at
# a time, so that an append waits for one block at most.
_CHECK_BLOCK_SECONDS = 0.1


def check(h5file: Target, *, progress: Callable[[str, int, int], None] | None = None) -> list[str]:
    """Every problem that keeps a file, image or series from reading back exactly here or from
    opening in ``flimage``: what the readers refuse (damaged chunks and meta data, wrong shapes
    or types, gaps in ``fli_N``) and what ``flimage`` needs beyond that (no unknown meta keys,
    members or attributes, unique identifiers, ``bg_data`` and both version attributes). A
    file that holds images or series in groups has each of them checked.

    Parameters
    ----------
    h5file
        As for :func:`read_image`. A path is opened anew for each tenth of a second of reading,
        so that an append to it waits that long at most.
    progress
        Called about twice a second while the images of a series are checked, as
        ``progress(where, images checked, images of the series)``, and once when they are done.

    Returns
    -------
    list of str
        The problems, each naming where it is; ``[]`` for a sound file.

    Raises
    ------
    TypeError
        ``h5file`` is no path, file object or ``h5py.Group``, or ``progress`` is not callable.

    A damaged global heap can make HDF5 itself loop forever: the command line's ``check``
    runs this in a child process that it stops after a time limit.

    Examples
    --------
    >>> import numpy as np, io
    >>> memory = io.BytesIO()
    >>> write_image(memory, np.ones((4, 4)))
    >>> check(memory)
    []
    """
    if progress is not None and not callable(progress):
        raise TypeError(f"progress must be callable or None, not {type(progress).__name__}")
    return _check(functools.partial(_open_read, h5file), progress)


# opens the file anew, yielding (group, label)
_Opener = Callable[[], contextlib.AbstractContextManager[tuple[h5py.Group, str]]]
_Progress = Callable[[str, int, int], None]  # (label, images checked, images in all)


def _check(opener: _Opener, progress: _Progress | None) -> list[str]:
    """Every problem found in what ``opener`` opens, through the readers' own code; [] when clean.
    A group that holds images or series in groups below it has each checked."""
    problems: list[str] = []
    try:
        inner: list[str] = []
        with opener() as (group, label):
            try:
                layout = _layout_of(group, label)
            except FormatError:  # neither an image nor a series: perhaps they are in groups
                inner = [found.name for found in _layouts_in(group, label)]
                if not inner:
                    raise
                layout = "groups"
            if layout == "image":
                _check_one_image(group, label, problems)
        if layout == "series":
            _check_a_series(opener, problems, progress)
        for name in inner:
            problems += _check(functools.partial(_open_below, opener, name), progress)
    except (OSError, ValueError) as exc:  # FormatError, and ValueError for a FIFO or device
        problems.append(_message(exc))
    return list(dict.fromkeys(problems))  # one damage can surface in several places


@contextlib.contextmanager
def _open_below(opener: _Opener, name: str) -> Iterator[tuple[h5py.Group, str]]:
    """The group ``name`` (absolute) in what ``opener`` opens."""
    with opener() as (group, label):
        below = _child(group.file, name, label, h5py.Group)
        yield below, _at(label, below)


def _check_a_series(opener: _Opener, problems: list[str], progress: _Progress | None) -> None:
    """What readers do not check of a series root (stray members and attributes), then its images, a
    block at a time with the file opened anew for each, then duplicate identifiers. Images appended
    meanwhile may go unchecked."""
    with opener() as (group, label):
        for key in _attribute_names(group, label):
            if key != "identifier":
                problems.append(
                    f"{label} has the attribute {key!r}; a series root holds only 'identifier'"
                )
                continue
            try:
                _text_attr(group, key, label)
            except FormatError as exc:
                problems.append(str(exc))
        for name in _names(group, label):
            if not name.startswith("fli_"):
                problems.append(f"{label} has the member {name!r}, which is not part of an FLSeries")
        numbers, numbering = _scan_series(group, label)
        problems += numbering
    owners: dict[str | None, list[str]] = {}  # identifier -> images
    checked = 0
    last_progress = time.monotonic()
    while checked < len(numbers):
        with opener() as (group, _):
            opened = time.monotonic()
            while checked < len(numbers) and time.monotonic() - opened < _CHECK_BLOCK_SECONDS:
                name = f"fli_{numbers[checked]}"
                owners.setdefault(_check_one_image(group, label, problems, name), []).append(name)
                checked += 1
                if progress is not None and time.monotonic() - last_progress > 0.5:
                    last_progress = time.monotonic()
                    progress(label, checked, len(numbers))
    if progress is not None:
        progress(label, len(numbers), len(numbers))  # done: a display of it may go
    owners.pop(None, None)
    for identifier, owner in owners.items():
        if len(owner) > 1:
            problems.append(
                f"{label} has the identifier {identifier!r} on {len(owner)} images: {owner[:10]}"
            )


def _check_one_image(
    parent: h5py.Group, label: str, problems: list[str], name: str | None = None
) -> str | None:
    """Read one image as the readers do, then what flimage needs beyond that; its identifier."""
    try:
        group = parent if name is None else _child(parent, name, label, h5py.Group)
        image_label = _at(label, group)
        keys = _attribute_names(group, label)
        for key in ("flimage version", "qpimage version"):
            if key not in keys:
                problems.append(
                    f"{image_label} lacks the attribute {key!r}: flimage cannot open it read-only"
                )
        fluorescence = _child(group, "fluorescence", label, h5py.Group)
        inner_label = _at(label, fluorescence)
        stray = _attribute_names(fluorescence, label)
        if stray:
            problems.append(f"{inner_label} has attributes {sorted(stray)}; it should have none")
        if not _has(fluorescence, "bg_data", label):
            problems.append(f"{inner_label} has no 'bg_data' group: flimage cannot open it read-only")
        with _Reading(label):
            kind = group.attrs.get_id("identifier").get_type() if "identifier" in keys else None
        if isinstance(kind, h5py.h5t.TypeStringID) and not kind.is_variable_str():
            fixed = f"{image_label} stores its identifier as fixed-length bytes"
            problems.append(f"{fixed}: flimage cannot find it by it")
        unknown: list[tuple[str, str]] = []
        (image,) = _load_images(group, label, [None], 1, unknown, problems)  # shapes, dtypes, checksums
        problems += [  # flimage refuses unknown meta keys; it writes attributes of its own on datasets
            f"{place} has the attribute {key!r}, which is no meta data key (flimage refuses it)"
            for key, place in unknown
            if place == image_label
        ]
        identifier = image["meta"].get("identifier")
        return identifier if isinstance(identifier, str) else None
    except (FormatError, OSError) as exc:
        problems.append(str(exc))
        return None


_WALK_LIMIT = 10_000  # groups looked into for the images and series of a file


def _layouts_in(group: h5py.Group, label: str) -> list[h5py.Group]:
    """The groups below ``group`` that hold an FLImage or FLSeries, depth first in name order; through
    hard links only (soft links may loop, external ones lead to other files), each group once."""
    found: list[h5py.Group] = []
    with _Reading(label):
        seen = {group.id}  # hashed by the object's address in the file, which HDF5 reads
    pending = [group]
    while pending and len(seen) < _WALK_LIMIT:
        node = pending.pop()
        names = _names(node, label)
        if node is not group and _holds_layout(names):
            found.append(node)
            continue
        groups = _linked_groups(node, names, label)
        with _Reading(label):
            fresh = [member for member in groups if member.id not in seen]
        seen.update(member.id for member in fresh)
        pending += reversed(fresh)
    return found


def _message(exc: BaseException) -> str:
    """One line for the user: an OSError without its '[Errno N]' prefix."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror if exc.filename is None else f"{exc.filename}: {exc.strerror}"
    return str(exc)


# 9. command line ---------------------------------------------------------------------------------------

# ``python -m flimage_io demo | check | info | preview``, also as a vendored copy: a scientist handed a
# file checks it, sees what it holds and looks at its frames without a script. It uses the public API,
# h5py, the wrappers above that turn h5py's read errors into FormatError, and _retry for its lock.
# ``check`` runs in a forked child, stopped after a time limit: on a damaged global heap (where HDF5
# keeps text) HDF5 can loop forever.

# 3x6 font: one octal digit per row (top to bottom), its value 4 = the left column; capitals and digits
# use the top five rows, lower case letters drop below the line into the sixth. Small enough to review by
# eye; legibility at larger tiles comes from integer scaling of the text, not from a bigger font.
_CHARS = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ .-_:=/#()+,?abcdefghijklmnopqrstuvwxyzµ!%'[];"
_CODES = (
    "75557 26227 71747 71317 55711 74717 74757 71111 75757 75717 25755 65656 34443 65556 "
    "74647 74644 34553 55755 72227 11152 55655 44447 57755 65555 25552 65644 25563 65655 "
    "34216 72222 55557 55552 55775 55255 55222 71247 00000 00002 00700 00007 02020 07070 "
    "11244 57575 24442 21112 02720 00024 71302 003530 446560 003430 113530 025630 347440 003536 "
    "446550 206270 101152 445650 622270 007750 006550 002520 006564 003531 005640 003260 227230 005530 "
    "005520 005770 005250 005536 007270 005564 22202 51245 22000 64446 31113 02024"
)
_FONT = types.MappingProxyType(dict(zip(_CHARS, _CODES.split())))
_BACKGROUND = 48  # dark gray for gaps and unused cells, so tile edges show against black image content
_GAP = 2  # px between cells
_TILE = 256  # px: the longer side of a frame on a contact sheet
_SCALE = 2  # text at twice the font's size is readable on a 256 px tile
_LINE = 8 * _SCALE  # px: a line of text, with a margin of one font pixel above and below
_PERCENTILES = (0.5, 99.5)  # black and white: a few hot or dead pixels do not set the range
_RAMP = 64  # px: the gray ramp under the sheet, from black to white
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _png(pixels: npt.NDArray[np.uint8]) -> bytes:
    """Encode a non-empty 2-D uint8 array as an 8-bit grayscale PNG."""

    def chunk(tag: bytes, data: bytes) -> bytes:  # the CRC covers the type and data, not the length
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    height, width = pixels.shape
    data = zlib.compress(np.pad(pixels, ((0, 0), (1, 0))).tobytes(), 6)  # each row: 0, filter None
    step = 1 << 20  # several IDAT chunks keep each chunk small; decoders concatenate them
    idat = b"".join(chunk(b"IDAT", data[i : i + step]) for i in range(0, len(data), step))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit gray, deflate, no interlace
    return _PNG_SIGNATURE + chunk(b"IHDR", ihdr) + idat + chunk(b"IEND", b"")


class _Frame(NamedTuple):
    """A frame as a contact sheet shows it, reduced as it was read: no full-size frame is kept."""

    means: npt.NDArray[np.float64]  # of blocks, at most _TILE on the longer side; NaN: nothing finite
    label: str
    metres: float | None  # the size of a block, when the pixel size is known


def _reduce(image: Image, position: int | None) -> _Frame:
    """The means of the image's blocks, the smallest that bring it to _TILE px or less (converted to
    float64 a strip at a time, never the frame), and its label: identifier, else time, else name."""
    raw = image["raw"]
    down = max(1, -(-max(raw.shape) // _TILE))
    starts = np.arange(0, raw.shape[1], down)
    tops = range(0, raw.shape[0], down)
    means = np.empty((len(tops), len(starts)))
    for row, top in enumerate(tops):
        strip = raw[top : top + down].astype(np.float64)
        finite = np.isfinite(strip)
        strip[~finite] = 0.0  # NaN and inf are left out of the means, and show black where alone
        sums = np.add.reduceat(strip.sum(axis=0), starts)
        counts = np.add.reduceat(finite.sum(axis=0), starts)
        with np.errstate(over="ignore", invalid="ignore"):  # huge sums become inf; 0 / 0 becomes NaN
            means[row] = sums / counts
    size = image["meta"].get("pixel size")
    metres = size * down if isinstance(size, float) and 0 < size < math.inf else None
    identifier = image["meta"].get("identifier")
    seconds = image["meta"].get("time")
    if isinstance(identifier, str) and identifier:
        return _Frame(means, identifier, metres)
    if isinstance(seconds, float):
        return _Frame(means, f"t={_quantity(seconds, 's')}", metres)
    return _Frame(means, "" if position is None else f"fli_{position}", metres)


def _range(frames: Sequence[_Frame]) -> tuple[float, float]:
    """The values shown black and white: the percentiles of the block means of ``frames`` together."""
    values = np.concatenate([frame.means[np.isfinite(frame.means)] for frame in frames])
    if not values.size:
        return 0.0, 0.0
    with np.errstate(over="ignore", invalid="ignore"):  # a range beyond float64 is handled by _tile
        low, high = np.percentile(values, _PERCENTILES)
    return float(low), float(high)


def _tile(frame: _Frame, low: float, high: float, each: bool) -> npt.NDArray[np.uint8]:
    """The frame stretched from ``low`` (black) to ``high`` (white) and enlarged, with its label (and
    with ``each`` its range) at the top left and a scale bar at the bottom left."""
    if 0.0 < high - low < math.inf:  # false for a constant image and for a range beyond float64
        gray = np.interp(frame.means, (low, high), (0.0, 255.0))
    else:
        gray = np.full(frame.means.shape, 128.0)  # mid-gray, so it is not mistaken for an empty image
    gray[~np.isfinite(frame.means)] = 0.0  # before the cast: casting NaN to uint8 warns
    up = max(1, _TILE // max(gray.shape))  # a whole factor: the pixels of a small frame stay square
    tile = np.rint(gray).astype(np.uint8).repeat(up, axis=0).repeat(up, axis=1)
    lines = [frame.label] + ([f"{_number(low)} to {_number(high)}"] if each else [])
    if any(lines):
        text = _text(*lines)
        tile[: text.shape[0], : text.shape[1]] = text[: tile.shape[0], : tile.shape[1]]
    if frame.metres is not None:  # a bar of a round length, about a fifth of the tile, over its length
        metres = frame.metres / up  # of a pixel of the tile
        target = tile.shape[1] / 5 * metres
        power = 10.0 ** math.floor(math.log10(target))
        length = max(step * power for step in (1, 2, 5) if step * power <= target * (1 + 1e-9))
        bar_px = round(length / metres)
        bar = _text(_quantity(length, "m"))
        bar = np.pad(bar, ((0, 4 * _SCALE), (0, max(0, bar_px + 2 * _SCALE - bar.shape[1]))))
        bar[-3 * _SCALE : -_SCALE, _SCALE : _SCALE + bar_px] = 255
        top = max(0, tile.shape[0] - bar.shape[0])
        tile[top:, : bar.shape[1]] = bar[: tile.shape[0] - top, : tile.shape[1]]
    return tile


def _text(*lines: str) -> npt.NDArray[np.uint8]:
    """White text on black, one line under another, at _SCALE times the font's size."""
    box = np.zeros((8 * len(lines), 4 * max(map(len, lines)) + 1), dtype=bool)
    for row, line in enumerate(lines):
        for k, ch in enumerate(line):
            code = _FONT.get(ch, _FONT["?"]).ljust(6, "0")
            glyph = [[int(digit, 8) >> (2 - column) & 1 for column in range(3)] for digit in code]
            box[8 * row + 1 : 8 * row + 7, 1 + 4 * k : 4 + 4 * k] = glyph
    return np.where(box, 255, 0).astype(np.uint8).repeat(_SCALE, axis=0).repeat(_SCALE, axis=1)


def _contact_sheet(frames: Sequence[_Frame], each: bool) -> npt.NDArray[np.uint8]:
    """The tiles row-major in a grid of cells as large as the largest tile and, under it, the range
    from black to white with a gray ramp: the same for all frames, or with ``each`` each frame's own."""
    each = each and len(frames) > 1
    ranges = [_range([frame]) for frame in frames] if each else [_range(frames)] * len(frames)
    tiles = [_tile(frame, low, high, each) for frame, (low, high) in zip(frames, ranges)]
    ramp = np.zeros((_LINE, _RAMP), np.uint8)
    ramp[_SCALE:-_SCALE] = np.rint(np.linspace(0, 255, _RAMP))  # as tall as a glyph
    if each:
        words = [ramp, _text(" each frame from its own black to white, in its label")]
    else:
        words = [_text(f"{_number(ranges[0][0])} "), ramp, _text(f" {_number(ranges[0][1])}")]
        words += [_text("  the same for all frames")] if len(frames) > 1 else []
    footer = np.hstack(words)
    columns = math.ceil(math.sqrt(len(tiles)))
    cell_height, cell_width = np.max([tile.shape for tile in tiles], axis=0) + _GAP
    height = -(-len(tiles) // columns) * cell_height  # with the gap above the footer
    width = max(columns * cell_width - _GAP, footer.shape[1])  # a small image gets a wider sheet
    sheet = np.full((height + _LINE, width), _BACKGROUND, np.uint8)
    sheet[height:] = np.pad(footer, ((0, 0), (0, width - footer.shape[1])))
    for i, tile in enumerate(tiles):
        top = i // columns * cell_height
        left = i % columns * cell_width
        sheet[top : top + tile.shape[0], left : left + tile.shape[1]] = tile
    return sheet


def _preview(spec: str, output: str | None, limit: int, each: bool) -> str:
    """Write a PNG contact sheet of a series (at most ``limit`` frames, evenly spread) or an image."""
    target = output or os.path.splitext(_split_spec(spec)[0])[0] + ".png"
    # before anything is read: an older PNG may go, never another file (the HDF5 file itself, through
    # a typo or a symlink) nor a FIFO, which would block
    png = False
    if os.path.isfile(target):
        with open(target, "rb") as existing:
            png = existing.read(8) == _PNG_SIGNATURE
    if os.path.lexists(target) and not png:
        message = f"{target} exists and is no PNG file; name another output with -o"
        raise FileExistsError(errno.EEXIST, message)
    with _open_spec(spec) as (group, label):
        positions: list[int | None] = [None]  # an image: the group itself
        if "fluorescence" not in group:
            count = len(read_series(group, lazy=True)["images"])
            if count == 0:
                raise FormatError(f"{label} is a series without images: nothing to show")
            shown = min(limit, count)
            positions = [round(i * (count - 1) / max(shown - 1, 1)) for i in range(shown)]
        # each frame is reduced, and let go, before the next is read
        frames = [_reduce(read_image(group, position), position) for position in positions]
    with open(target, "wb") as handle:
        handle.write(_png(_contact_sheet(frames, each)))
    return f"wrote {target}: {len(frames)} frame{'s' * (len(frames) != 1)}"


def _demo(path: str | None) -> None:
    """Write a small sample series (to ``path``, else in memory) and print what was read back."""
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
    memory = io.BytesIO()
    write_series(path or memory, {"identifier": "demo run", "images": images})
    series = read_series(path or memory)
    kept = f"wrote {path}" if path else "wrote a sample series (pass a PATH to keep it)"
    size = os.path.getsize(path) if path else len(memory.getvalue())
    print(f"{kept}, {size} bytes, and read it back:")
    print(f"series identifier: {series['identifier']!r}, {len(series['images'])} images")
    for position, image in enumerate(series["images"]):
        raw = image["raw"]
        meta = image["meta"]
        # in floating point: uint16 counts minus a background would wrap around
        mean = (raw - image["bg_data"]["data"].astype(np.float64)).mean()
        stored = f"raw {raw.shape} {raw.dtype}, time {meta['time']} s"
        print(f"  fli_{position}: {meta['identifier']!r} {stored}, mean corrected intensity {mean:.1f}")
    one = read_image(path or memory, index="frame 3")
    print(f"read_image(path, index='frame 3'): time {one['meta']['time']} s")


def _split_spec(spec: str) -> tuple[str, str]:
    """'FILE', 'FILE:/group' or 'FILE:group' -> (FILE, '/group'); an existing file wins over a split."""
    if not os.path.exists(spec):
        for at in (match.start() for match in re.finditer(":", spec)):
            if os.path.isfile(spec[:at]):
                return spec[:at], "/" + spec[at + 1 :].lstrip("/")
    return spec, "/"


@contextlib.contextmanager
def _open_spec(spec: str) -> Iterator[tuple[h5py.Group, str]]:
    """The group that ``FILE`` or ``FILE:/group`` names, open read-only in h5py under the readers'
    lock, and its label; unknown meta keys are not warned about meanwhile (check lists them)."""
    path, inner = _split_spec(spec)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnknownMetaWarning)
        # Our read first: it refuses what is no file (a FIFO would block the open), waits out a commit
        # and rolls back one that a kill cut short. What it refuses as no image or series, h5py opens.
        with contextlib.suppress(FormatError):
            read_series(path, [], lazy=True)
        with open(path, "rb") as shared:
            # The readers' flock, as HDF5's own lock (which HDF5_USE_FILE_LOCKING=FALSE turns off): a
            # commit of our writers waits for it. A commit begun since our read is short; another
            # program's write lock is not, and is refused as in use after _LOCK_WAIT s.
            if _fcntl is not None:
                deadline = time.monotonic() + _LOCK_WAIT
                _retry(deadline, path, _fcntl.flock, shared, _fcntl.LOCK_SH | _fcntl.LOCK_NB)
            try:
                opened = h5py.File(path, "r")
            except OSError as exc:
                damaged = f"{path} is not a readable HDF5 file (empty, truncated or another format)"
                raise FormatError(f"{damaged}: {exc}") from None
            with opened:
                node: h5py.Group | h5py.Dataset = opened
                # through hard links only: soft links may loop, external ones leave the file
                for name in filter(None, inner.split("/")):
                    link = node.get(name, getlink=True) if isinstance(node, h5py.Group) else None
                    if link is None:
                        raise FormatError(f"{path} has no group {inner}")
                    if not isinstance(link, h5py.HardLink):
                        why = "is a soft link or a link to another file, which are not followed"
                        raise FormatError(f"{path}:{inner} {why}")
                    node = node[name]
                if not isinstance(node, h5py.Group):
                    kind = type(node).__name__.lower()
                    raise FormatError(f"{path}:{inner} is a {kind}, not a group")
                yield node, path if node.name == "/" else f"{path}:{node.name}"


def _check_guarded(spec: str, limit: float | None) -> list[str]:
    """:func:`check` of ``FILE`` or ``FILE:/group`` in a forked child process, stopped after ``limit``
    seconds (None: a minute and half a second more per MiB); its progress on stderr on a terminal."""
    import multiprocessing

    def show(label: str, checked: int, total: int) -> None:  # the line is cleared when all are done
        line = f"\r{label}: checked {checked} of {total} images" if checked < total else "\r\033[K"
        print(line, end="", file=sys.stderr, flush=True)

    progress = show if sys.stderr.isatty() else None
    path, inner = _split_spec(spec)
    if limit is None:
        limit = 60.0 + 0.5 * (os.path.getsize(path) if os.path.isfile(path) else 0) / 2**20
    context = multiprocessing.get_context("fork")
    receiver, sender = context.Pipe(duplex=False)
    parent = os.getpid()

    def check_in_child() -> None:
        # On Linux the kernel kills this child when its parent dies: a check killed from outside (kill
        # -9, a timeout) leaves no child behind that reads, and locks, the file.
        if sys.platform.startswith("linux"):
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the parent died before that took hold
            os._exit(1)
        try:
            if inner == "/":  # by path: an append to the file may go on between the check's blocks
                problems = check(path, progress=progress)
            else:
                with _open_spec(spec) as (group, _):
                    problems = check(group, progress=progress)
        except (OSError, ValueError) as exc:  # FormatError, and ValueError for a FIFO or device
            problems = [_message(exc)]
        sender.send(problems)

    child = context.Process(target=check_in_child, daemon=True)
    child.start()
    sender.close()
    try:
        if receiver.poll(limit):
            return list(receiver.recv())
        stopped = f"checking took over {limit:.0f} s and was stopped; HDF5 may loop on damaged data"
        return [f"{spec}: {stopped}"]
    except EOFError:
        return [f"{spec}: the check crashed (exit code {child.exitcode}); the file is damaged"]
    finally:
        child.kill()
        child.join()
        receiver.close()


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


def _quantity(value: float, unit: str) -> str:
    """A number with its unit; metres and seconds below 1 with the prefix that brings them to 1 or more:
    1.39e-07 m -> '139 nm', 0.04 s -> '40 ms'."""
    if unit in ("m", "s") and math.isfinite(value) and value != 0:
        rounded = float(f"{value:.4g}")  # 999.96 nm is 1 µm
        prefixes = (("", 1.0), ("m", 1e-3), ("µ", 1e-6), ("n", 1e-9), ("p", 1e-12))
        prefix, scale = next((p for p in prefixes if abs(rounded) >= p[1]), prefixes[-1])
        return f"{_number(rounded / scale)} {prefix}{unit}"
    return f"{_number(value)} {unit}".rstrip()


# The meta data keys in the order info shows them: what tells images apart first, versions last (a key
# that comes twice is sorted by its first place).
_META_ORDER = ("identifier", "date", "time", *NUMBER_KEYS, *SEQUENCE_KEYS, *TEXT_KEYS)


def _meta_text(meta: Mapping[str, Any]) -> str:
    """'identifier 'cell 3', time 40 ms, pixel size 139 nm, ...'; text quoted, numbers with units."""
    shown = []
    for key in sorted(meta, key=_META_ORDER.index):  # the readers return no other keys
        value = meta[key]
        if isinstance(value, str):
            shown.append(f"{key} {value!r}")
        elif isinstance(value, tuple):  # sim center
            shown.append(f"{key} ({', '.join(map(_number, value))}) px")
        else:
            shown.append(f"{key} {_quantity(value, NUMBER_KEYS[key])}")
    return ", ".join(shown) or "none"


def _storage(images: Sequence[h5py.Group], label: str) -> list[str]:
    """Shape, dtype, backgrounds, filters, chunks and sizes of raw images, found as the readers do."""
    groups = [_child(image, "fluorescence", label, h5py.Group) for image in images]
    raws = [_child(group, "raw", label, h5py.Dataset) for group in groups]
    heads = [_check_dataset(raw, label, None) for raw in raws]
    first = raws[0]
    kinds = len({(head.shape, head.dtype.str) for head in heads})
    same = "" if len(raws) == 1 else " (all images)" if kinds == 1 else f" (fli_0; {kinds} kinds)"
    has_bg = _has(groups[0], "bg_data", label)
    backgrounds = _names(_child(groups[0], "bg_data", label, h5py.Group), label) if has_bg else []
    stored = sum(raw.id.get_storage_size() for raw in raws)
    logical = sum(raw.size * raw.dtype.itemsize for raw in raws)
    compression = first.compression
    if first.compression_opts:
        compression = f"{compression} level {first.compression_opts}"
    flags = (("shuffle", first.shuffle), (compression, compression), ("fletcher32", first.fletcher32))
    filters = ", ".join(name for name, on in flags if on) or "none"
    chunks = "x".join(map(str, first.chunks)) if first.chunks else "contiguous"
    return [
        f"  raw: {'x'.join(map(str, first.shape))} {first.dtype}{same}; "
        f"background: {', '.join(sorted(backgrounds)) or 'none'}",
        f"  filters: {filters}; chunks {chunks}; raw data stored in "
        f"{_size(stored)} of {_size(logical)} (ratio {logical / max(stored, 1):.2f})",
    ]


def _summary(group: h5py.Group, label: str, file_size: int | None) -> str:
    """Kind, images, raw data, file size, times, and the meta data of the first and the last image."""
    metas: list[Mapping[str, Any]]
    if "fluorescence" in group:
        metas = [read_image(group)["meta"]]
        images = [group]
        lines = [f"{label}: FLImage"]
    else:
        series = read_series(group, lazy=True)
        metas = [image["meta"] for image in series["images"]]  # without pixels
        images = [group[f"fli_{n}"] for n in range(len(metas))]  # as the readers found them
        named = "without identifier" if series["identifier"] is None else repr(series["identifier"])
        lines = [f"{label}: FLSeries {named}, {len(metas)} image{'s' * (len(metas) != 1)}"]
    lines += _storage(images, label) if images else []
    lines += [] if file_size is None else [f"  file size: {_size(file_size)}"]
    times = [meta["time"] for meta in metas if "time" in meta]
    if len(times) > 1:
        span = f"{_quantity(min(times), 's')} to {_quantity(max(times), 's')}"
        interval = _quantity(float(np.median(np.diff(times))), "s")
        some = f" ({len(times)} of {len(metas)} images have a time)" if len(times) < len(metas) else ""
        lines.append(f"  time: {span}, median interval {interval}{some}")
    for n in sorted({0, len(metas) - 1}) if metas else []:
        name = "meta" if "fluorescence" in group else f"meta of fli_{n}"
        lines.append(f"  {name}: {_meta_text(metas[n])}")
    return "\n".join(lines)


def _info(spec: str) -> str:
    """A summary of an image or series; of each one in the groups of a file that holds them in groups."""
    path = _split_spec(spec)[0]
    with _open_spec(spec) as (group, label):
        size = os.path.getsize(path)
        names = _names(group, label)
        layouts = [] if not names or _holds_layout(names) else _layouts_in(group, label)
        if not layouts:  # neither an image nor a series raises there
            return _summary(group, label, size)
        images = sum("fluorescence" in layout for layout in layouts)
        kinds = [(images, "FLImage", "FLImages"), (len(layouts) - images, "FLSeries", "FLSeries")]
        held = " and ".join(f"{n} {one if n == 1 else many}" for n, one, many in kinds if n)
        summaries = [_summary(layout, f"{path}:{layout.name}", None) for layout in layouts]
        return "\n".join([f"{label}: {held} in groups; file size {_size(size)}", *summaries])


def main(argv: Sequence[str] | None = None, prog: str = "python -m flimage_io") -> int:
    """Run the command line, as ``python -m flimage_io`` does.

    Parameters
    ----------
    argv
        The arguments, e.g. ``["check", "run7.h5"]`` (default: ``sys.argv[1:]``).
    prog
        The program's name in usage and error messages.

    Returns
    -------
    int
        The exit status: 0 when all went well, 1 when a file has problems or could not be read.

    Raises
    ------
    SystemExit
        For ``-h``, ``--version`` (status 0) and usage mistakes (status 2), as argparse does.

    Examples
    --------
    >>> main(["check", "no such file.h5"])
    no such file.h5: 1 problem(s)
      - no such file: no such file.h5
    1
    """
    import argparse  # here: a project that vendors the module for its functions does not pay for it

    def seconds(text: str) -> float:
        with contextlib.suppress(ValueError):
            if 0 < float(text) < math.inf:
                return float(text)
        raise argparse.ArgumentTypeError(f"must be a number of seconds above 0, not {text!r}")

    def frame_count(text: str) -> int:
        if text.isdecimal() and int(text) >= 1:
            return int(text)
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, not {text!r}")

    about = "Read, check and look at FLImage / FLSeries HDF5 files."
    inside = "FILE may name an image or series inside a larger file as FILE:/group/path."
    parser = argparse.ArgumentParser(prog=prog, description=about, epilog=inside)
    versions = f"h5py {h5py.__version__}, HDF5 {h5py.version.hdf5_version}, numpy {np.__version__}"
    parser.add_argument("--version", action="version", version=f"flimage_io {__version__} ({versions})")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = commands.add_parser("demo", help="write a sample series and print what was read back")
    demo.add_argument("path", nargs="?", metavar="PATH", help="keep the file here (default: not kept)")
    checks = commands.add_parser("check", help="list every problem; exit 0 only when all are clean")
    checks.add_argument("files", nargs="+", metavar="FILE")
    limit = "stop checking a file after this long (default: a minute and half a second per MiB)"
    checks.add_argument("--time-limit", type=seconds, metavar="SECONDS", help=limit)
    info = commands.add_parser("info", help="summarise each file")
    info.add_argument("files", nargs="+", metavar="FILE")
    preview = commands.add_parser("preview", help="write a PNG contact sheet of a series or image")
    preview.add_argument("file", metavar="FILE")
    preview.add_argument("-o", "--output", metavar="OUT.png", help="default: FILE with the suffix .png")
    frames = "at most N frames (default 36)"
    preview.add_argument("-n", "--frames", type=frame_count, default=36, metavar="N", help=frames)
    each = "stretch each frame to its own black and white (default: one range, so that changes show)"
    preview.add_argument("--each", action="store_true", help=each)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.error("name a command: demo, check, info or preview")
    # a user's mistake or a bad file (FormatError, a FIFO, h5py on damage): one line, no traceback
    errors = (OSError, ValueError, RuntimeError, KeyError)
    failed = False
    try:
        if args.command == "demo":
            _demo(args.path)
        elif args.command == "preview":
            print(_preview(args.file, args.output, args.frames, args.each))
        elif args.command == "check":
            for spec in args.files:
                problems = _check_guarded(spec, args.time_limit)
                failed = failed or bool(problems)
                summary = f"{len(problems)} problem(s)" if problems else "ok"
                print(f"{spec}: {summary}", *(f"  - {p}" for p in problems), sep="\n", flush=True)
        else:
            for spec in args.files:
                try:
                    summary = _info(spec)
                except errors as exc:
                    failed = True
                    message = _message(exc)
                    named = message if _split_spec(spec)[0] in message else f"{spec}: {message}"
                    print(named, file=sys.stderr)
                else:
                    print(summary, flush=True)
        return int(failed)
    except BrokenPipeError:  # the reader of our output has gone (``| head``): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except errors as exc:
        print(f"{parser.prog}: error: {_message(exc)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(prog=f"python -m {__spec__.name if __spec__ else 'flimage_io'}"))
