"""Read and write FLImage / FLSeries HDF5 files with nothing but h5py and numpy.

The layout is the one of the ``flimage`` package: files written here open in
``flimage`` (any version that reads its own files), and every file ``flimage``
wrote opens here with the same numbers.

Data in, data out: an image is a plain dict ::

    {"raw": ndarray, "bg_data": {"data": ndarray}, "meta": {"pixel size": 1.4e-7}}

and a series is ``{"identifier": str | None, "images": [image, ...]}``.
The dict that :func:`read_image` returns is the dict :func:`write_image`
takes, and the same for :func:`read_series` / :func:`write_series`.

This module is self-contained: copy ``flimage_io.py`` into a project as is.
If the optional ``zlib-ng`` package is installed it is used for (de)compression,
otherwise the standard library's ``zlib``; both write the same standard
deflate streams that every HDF5 install reads.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextvars
import difflib
import itertools
import math
import numbers
import os
import re
import sys
import tempfile
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from types import ModuleType
from typing import IO, Any, NamedTuple, TypedDict, Union

import h5py
import numpy as np
import numpy.typing as npt

_zlib_ng: ModuleType | None
try:  # optional accelerator, ``pip install "flimage_io[fast]"``
    from zlib_ng import zlib_ng as _zlib_ng
except ImportError:  # pragma: no cover - depends on the environment
    _zlib_ng = None

__version__ = "0.1.0"

__all__ = [
    "META_KEYS",
    "NUMBER_KEYS",
    "SEQUENCE_KEYS",
    "TEXT_KEYS",
    "FormatError",
    "Image",
    "ImageNotFoundError",
    "MetaValue",
    "Series",
    "Target",
    "read_image",
    "read_series",
    "write_image",
    "write_series",
]

#: Meta data keys that hold real numbers (stored as float64), with their unit.
NUMBER_KEYS: dict[str, str] = {
    "pixel size": "m",
    "time": "s",
    "angle": "rad",
    "focus": "m",
    "numerical aperture": "",
    "pos x": "m",
    "pos y": "m",
    "sim radius": "m",
}
#: Meta data keys that hold text (stored as variable-length UTF-8 strings).
TEXT_KEYS: tuple[str, ...] = (
    "date",
    "device",
    "identifier",
    "sim model",
    "software",
    "flimage version",
    "qpimage version",
)
#: Meta data key that holds a sequence of numbers (stored as a float64 array).
SEQUENCE_KEYS: tuple[str, ...] = ("sim center",)
#: The 16 meta data keys of the layout; ``flimage`` rejects any other key.
META_KEYS: frozenset[str] = frozenset(NUMBER_KEYS) | frozenset(TEXT_KEYS) | frozenset(SEQUENCE_KEYS)

MetaValue = Union[float, str, tuple[float, ...]]
Target = Union[str, "os.PathLike[str]", IO[bytes], h5py.Group]


class Image(TypedDict):
    """One image as :func:`read_image` returns it and :func:`write_image` takes it."""

    raw: npt.NDArray[Any]
    bg_data: dict[str, npt.NDArray[Any]]
    meta: dict[str, MetaValue]


class Series(TypedDict):
    """A series as :func:`read_series` returns it and :func:`write_series` takes it."""

    identifier: str | None
    images: list[Image]


class FormatError(ValueError):
    """A file is damaged, or does not hold the FLImage / FLSeries layout asked for."""


class _KeyError(KeyError):
    """A ``KeyError`` whose message prints as written, not quoted."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class ImageNotFoundError(_KeyError, IndexError):
    """The index or identifier names no image of the series.

    A ``KeyError`` (as in ``flimage``) and an ``IndexError`` (as for lists).
    """


# ---------------------------------------------------------------------------
# public API
# ---------------------------------------------------------------------------


def write_image(
    h5file: Target,
    image: Mapping[str, Any],
    *,
    dtype: npt.DTypeLike = "float32",
    compression: str | None = "gzip",
    level: int | None = None,
    shuffle: bool = True,
    workers: int | None = None,
) -> None:
    """Write one image in the FLImage layout.

    Parameters
    ----------
    h5file
        A path (created, or replaced whole and atomically), a binary file
        object opened for writing, or an open, writable ``h5py.Group`` that
        does not yet hold an image or series.
    image
        ``{"raw": 2-D array, "bg_data": {name: array} | array | None,
        "meta": {key: value} | None}``; only ``raw`` is required.
    dtype
        Storage dtype of the image datasets (default ``float32``, as
        ``flimage``); ``None`` keeps each array's dtype. Boolean arrays stay
        boolean. Integer storage of float data is refused.
    compression
        ``"gzip"`` (deflate, read by every HDF5 install) or ``None``.
    level
        ``None`` (default): fast run-length deflate, smaller and 3x faster
        than level 1 on shuffled images. ``1`` to ``9``: a zlib level
        (``level=9, shuffle=False`` are ``flimage``'s own settings).
    shuffle
        Apply HDF5's byte shuffle filter before compression.
    workers
        Threads that encode chunks (default: the CPUs available).

    Raises
    ------
    TypeError, ValueError, KeyError
        For invalid arguments or image contents, before the disk is touched.
    OSError
        When the target cannot be written.

    Examples
    --------
    >>> import numpy as np, io
    >>> write_image(io.BytesIO(), {"raw": np.ones((4, 5)), "meta": {"time": 1.5}})
    """
    options = _check_options(dtype, compression, level, shuffle, workers)
    checked = _check_image(image, options.dtype, "image")
    with _WriteTarget(h5file, append=False) as group:
        _refuse_occupied(group, series=False)
        with _ChunkWriter(options) as writer:
            writer.add_image(group, None, checked)


def read_image(h5file: Target, index: int | str | None = None, *, workers: int | None = None) -> Image:
    """Read one image from an FLImage file, or one image of an FLSeries file.

    Parameters
    ----------
    h5file
        A path, a binary file object, or an open ``h5py.Group``.
    index
        ``None`` for an FLImage file. For an FLSeries file: the position of
        the image (an int, negative counts from the end) or its identifier
        (a str). Only that image is read.
    workers
        Threads that decode chunks (default: the CPUs available).

    Returns
    -------
    Image
        ``{"raw": ndarray, "bg_data": {name: ndarray}, "meta": {key: value}}``;
        numbers in ``meta`` are ``float``, text is ``str``, ``sim center`` a
        tuple of floats.

    Raises
    ------
    FileNotFoundError
        The path does not exist.
    FormatError
        The file is not HDF5, is damaged, or holds another layout (e.g. a
        series read without ``index``).
    ImageNotFoundError
        ``index`` names no image of the series.
    TypeError
        ``index`` is neither int, str nor None.

    Examples
    --------
    >>> import numpy as np, io
    >>> f = io.BytesIO(); write_image(f, {"raw": np.eye(3)})
    >>> read_image(f)["raw"].shape
    (3, 3)
    """
    if isinstance(index, numbers.Integral) and not isinstance(index, (bool, np.bool_)):
        index = int(index)  # numpy integers too
    elif index is not None and not isinstance(index, str):
        raise TypeError(f"index must be an int, a str or None, not {type(index).__name__}")
    workers = _check_workers(workers)
    with _ReadSource(h5file) as (group, source):
        where = _at(source, group)
        kind = _layout_of(group, where)
        if kind == "image":
            if index is not None:
                raise FormatError(
                    f"{where} holds a single FLImage, not an FLSeries: "
                    f"read it with index=None, not index={index!r}"
                )
            image_group = group
        else:
            if index is None:
                count = len(_series_names(group, where))
                raise FormatError(
                    f"{where} holds an FLSeries of {count} images, not an FLImage: pass "
                    "index=<position or identifier> to read one image, or use read_series"
                )
            name = _find_image(group, source, index)
            image_group = group[name]
        with _ChunkReader(workers) as reader:
            pending = reader.read_image(image_group, source)
            return pending.result()


def write_series(
    h5file: Target,
    series: Mapping[str, Any],
    *,
    dtype: npt.DTypeLike = "float32",
    compression: str | None = "gzip",
    level: int | None = None,
    shuffle: bool = True,
    workers: int | None = None,
    append: bool = False,
) -> None:
    """Write a series of images in the FLSeries layout, or append to one.

    Parameters
    ----------
    h5file
        A path (created, or replaced whole and atomically), a binary file
        object opened for writing, or an open, writable ``h5py.Group`` that
        does not yet hold an image or series (e.g. ``f.create_group("flseries")``).
    series
        ``{"identifier": str | None, "images": iterable of images}``. The
        images may come from a generator: it is consumed once, and only a few
        images are held in memory at a time. Image identifiers
        (``meta["identifier"]``) must be unique.
    dtype, compression, level, shuffle, workers
        As for :func:`write_image`.
    append
        Add the images after the last ``fli_N`` of the series already in
        ``h5file`` (a path, file object or group; created when missing or
        empty). The cost is that of the new images; when they carry
        identifiers, the existing identifiers are read once to keep all
        unique. ``series["identifier"]`` must be None or match the file's.
        Appending to a path changes the file in place (not atomically): if
        the call fails, the images it added are removed again.

    Raises
    ------
    TypeError, ValueError, KeyError
        For invalid arguments or images. An invalid image found while the
        images are consumed removes what was written: a path is left as it
        was before the call, a group as it was.
    FormatError
        ``append=True`` and the target holds an FLImage or another layout.
    OSError
        When the target cannot be written.

    Examples
    --------
    >>> import numpy as np, io
    >>> images = ({"raw": np.full((4, 4), t)} for t in range(3))
    >>> write_series(io.BytesIO(), {"identifier": "run 1", "images": images})
    """
    options = _check_options(dtype, compression, level, shuffle, workers)
    if not isinstance(append, bool):
        raise TypeError(f"append must be True or False, not {type(append).__name__}")
    identifier, images = _check_series(series)
    with _WriteTarget(h5file, append=append) as group:
        if append:
            start = _prepare_append(group, identifier)
        else:
            _refuse_occupied(group, series=True)
            start = 0
        if identifier is not None and "identifier" not in group.attrs:
            group.attrs["identifier"] = identifier
        seen: dict[str, int] | None = None  # identifier -> position, read lazily when appending
        with _ChunkWriter(options) as writer:
            for position, image in enumerate(images, start):
                what = f"series['images'][{position - start}]"
                checked = _check_image(image, options.dtype, what)
                ident = checked.meta.get("identifier")
                if isinstance(ident, str):
                    if seen is None:
                        seen = _identifiers(group, start)
                    if ident in seen:
                        raise ValueError(
                            f"{what} has identifier {ident!r}, already used by fli_{seen[ident]}; "
                            "identifiers must be unique within a series"
                        )
                    seen[ident] = position
                writer.add_image(group, f"fli_{position}", checked)


def _prepare_append(group: Any, identifier: str | None) -> int:
    """Check that a group holds a series to append to; return its length."""
    where = _where(group)
    if len(group):
        if _layout_of(group, where) == "image":
            raise FormatError(f"{where} holds an FLImage, not an FLSeries: cannot append images to it")
        count = _series_length(group, where)
    else:
        count = 0
    if identifier is not None and "identifier" in group.attrs:
        existing = _read_text_attr(group, "identifier", where)
        if existing != identifier:
            raise ValueError(
                f"series['identifier'] is {identifier!r}, but the series in {where} is {existing!r}; "
                "pass None to keep it"
            )
    return count


def _identifiers(group: Any, count: int) -> dict[str, int]:
    """Identifier -> position of the first ``count`` images of a series."""
    found: dict[str, int] = {}
    source = group.file.filename
    for position in range(count):
        identifier = _identifier_of(group, f"fli_{position}", source)
        if identifier is not None:
            found.setdefault(identifier, position)
    return found


def read_series(h5file: Target, *, workers: int | None = None) -> Series:
    """Read every image of an FLSeries file, in numeric order.

    Parameters
    ----------
    h5file
        A path, a binary file object, or an open ``h5py.Group`` holding a series.
    workers
        Threads that decode chunks (default: the CPUs available).

    Returns
    -------
    Series
        ``{"identifier": str | None, "images": [image, ...]}`` with ``fli_10``
        after ``fli_9``.

    Raises
    ------
    FileNotFoundError
        The path does not exist.
    FormatError
        The file is not HDF5, is damaged, holds an FLImage, another layout,
        or a gap in the ``fli_`` numbering.

    Examples
    --------
    >>> import numpy as np, io
    >>> f = io.BytesIO()
    >>> write_series(f, {"identifier": None, "images": [{"raw": np.eye(2)}] * 2})
    >>> len(read_series(f)["images"])
    2
    """
    workers = _check_workers(workers)
    with _ReadSource(h5file) as (group, source):
        where = _at(source, group)
        if _layout_of(group, where) == "image":
            raise FormatError(f"{where} holds a single FLImage, not an FLSeries: read it with read_image")
        names = _series_names(group, where)
        identifier = _read_text_attr(group, "identifier", where) if "identifier" in group.attrs else None
        with _ChunkReader(workers) as reader:
            pending = [reader.read_image(group[name], source) for name in names]
            images = [p.result() for p in pending]
    return {"identifier": identifier, "images": images}


# ---------------------------------------------------------------------------
# argument checks
# ---------------------------------------------------------------------------

_STORABLE_KINDS = "biuf"


class _Options(NamedTuple):
    dtype: np.dtype[Any] | None
    compress: bool
    level: int | None
    shuffle: bool
    workers: int


class _CheckedImage(NamedTuple):
    raw: npt.NDArray[Any]
    bg_data: dict[str, npt.NDArray[Any]]
    meta: dict[str, Any]


def _check_workers(workers: int | None) -> int:
    if workers is None:
        try:
            return max(1, len(os.sched_getaffinity(0)))
        except AttributeError:  # pragma: no cover - not on Linux
            return max(1, os.cpu_count() or 1)
    if isinstance(workers, bool) or not isinstance(workers, int):
        raise TypeError(f"workers must be an int or None, not {type(workers).__name__}")
    if workers < 1:
        raise ValueError(f"workers must be at least 1, not {workers}")
    return workers


def _check_options(
    dtype: npt.DTypeLike, compression: str | None, level: int | None, shuffle: bool, workers: int | None
) -> _Options:
    storage: np.dtype[Any] | None = None
    if dtype is not None:
        try:
            storage = np.dtype(dtype)
        except TypeError as exc:
            raise TypeError(f"dtype {dtype!r} is not a numpy dtype: {exc}") from None
        _check_storable(storage, "dtype")
    if compression not in ("gzip", None):
        raise ValueError(
            f"compression must be 'gzip' or None, not {compression!r} "
            "(only filters that every HDF5 install ships keep files portable)"
        )
    if level is not None:
        if isinstance(level, bool) or not isinstance(level, int):
            raise TypeError(f"level must be an int from 1 to 9 or None, not {type(level).__name__}")
        if not 1 <= level <= 9:
            raise ValueError(f"level must be from 1 to 9 or None, not {level}")
        if compression is None:
            raise ValueError(f"level={level} needs compression='gzip', not compression=None")
    if not isinstance(shuffle, bool):
        raise TypeError(f"shuffle must be True or False, not {type(shuffle).__name__}")
    return _Options(storage, compression == "gzip", level, shuffle, _check_workers(workers))


def _check_storable(dtype: np.dtype[Any], what: str) -> None:
    if dtype.kind not in _STORABLE_KINDS or dtype.itemsize > 8:
        raise TypeError(
            f"{what} must be a real numeric or bool dtype (bool, int8-64, uint8-64, "
            f"float16/32/64), not {dtype}"
        )


def _suggest(name: str, valid: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, sorted(valid), n=1, cutoff=0.5)
    return f"; did you mean {close[0]!r}?" if close else ""


def _check_array(
    value: Any, storage: np.dtype[Any] | None, what: str, shape: tuple[int, ...] | None
) -> npt.NDArray[Any]:
    if isinstance(value, (str, bytes)) or value is None:
        raise TypeError(f"{what} must be a 2-D numeric array, not {type(value).__name__}")
    try:
        array = np.asarray(value)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{what} is not an array: {exc}") from None
    if array.dtype.kind not in _STORABLE_KINDS or array.dtype.itemsize > 8:
        raise TypeError(f"{what} must hold real numbers or bools, but has dtype {array.dtype}")
    if shape is None:
        if array.ndim != 2:
            raise ValueError(f"{what} must be 2-D, but has shape {array.shape}")
        if array.size == 0:
            raise ValueError(f"{what} must not be empty, but has shape {array.shape}")
    elif array.shape != shape:
        raise ValueError(f"{what} must have the shape of raw {shape}, but has shape {array.shape}")
    target = _storage_dtype(array.dtype, storage)
    if target.kind in "iu" and array.dtype.kind == "f":
        raise TypeError(
            f"{what} holds {array.dtype} values; storing them as {target} would truncate "
            "them: pass dtype=None or a float dtype, or convert the array yourself"
        )
    if target.kind in "iu" and array.dtype.kind in "iu" and not np.can_cast(array.dtype, target):
        info = np.iinfo(target)
        low, high = int(array.min()), int(array.max())
        if low < info.min or high > info.max:
            raise ValueError(
                f"{what} holds values from {low} to {high}, outside the range of "
                f"the storage dtype {target} ({info.min} to {info.max})"
            )
    return array


def _storage_dtype(source: np.dtype[Any], storage: np.dtype[Any] | None) -> np.dtype[Any]:
    """The dtype an array is stored with: bool stays bool, like ``flimage``."""
    if source.kind == "b":
        return np.dtype(bool)
    chosen = source if storage is None else storage
    return chosen.newbyteorder("<") if chosen.itemsize > 1 else chosen


def _check_meta(meta: Any, what: str) -> dict[str, Any]:
    """Validate meta data and convert it to the values that are stored."""
    if meta is None:
        meta = {}
    if not isinstance(meta, Mapping):
        raise TypeError(f"{what} must be a dict of meta data, not {type(meta).__name__}")
    checked: dict[str, Any] = {}
    for key, value in meta.items():
        if not isinstance(key, str):
            raise TypeError(f"{what} keys must be str, not {type(key).__name__} ({key!r})")
        if key not in META_KEYS:
            raise _KeyError(
                f"{what} has the unknown key {key!r}{_suggest(key, META_KEYS)} "
                f"(valid keys: {', '.join(sorted(META_KEYS))})"
            )
        if key in NUMBER_KEYS:
            if not _is_real_number(value):
                raise TypeError(
                    f"{what}[{key!r}] must be a real number, not {type(value).__name__} ({value!r})"
                )
            checked[key] = float(value)
        elif key in TEXT_KEYS:
            checked[key] = _check_text(value, f"{what}[{key!r}]")
        else:
            if isinstance(value, (str, bytes)) or not isinstance(value, (Sequence, np.ndarray)):
                raise TypeError(
                    f"{what}[{key!r}] must be a sequence of numbers, not {type(value).__name__} ({value!r})"
                )
            items = list(np.asarray(value).ravel()) if isinstance(value, np.ndarray) else list(value)
            if (isinstance(value, np.ndarray) and value.ndim != 1) or not all(map(_is_real_number, items)):
                raise TypeError(f"{what}[{key!r}] must be a flat sequence of real numbers, not {value!r}")
            checked[key] = np.array([float(v) for v in items], dtype=np.float64)
    checked.setdefault("flimage version", f"flimage_io {__version__}")
    checked.setdefault("qpimage version", f"flimage_io {__version__}")
    return checked


def _check_text(value: Any, what: str, expected: str = "a str") -> str:
    if not isinstance(value, str):
        raise TypeError(f"{what} must be {expected}, not {type(value).__name__} ({value!r})")
    if "\x00" in value:
        raise ValueError(f"{what} contains a NUL character, which HDF5 strings cannot hold: {value!r}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"{what} is not valid Unicode text ({exc}): {value!r}") from None
    return value


def _is_real_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def _check_image(image: Any, storage: np.dtype[Any] | None, what: str) -> _CheckedImage:
    if not isinstance(image, Mapping):
        raise TypeError(f"{what} must be a dict with 'raw', 'bg_data', 'meta', not {type(image).__name__}")
    for key in image:
        if key not in ("raw", "bg_data", "meta"):
            raise _KeyError(
                f"{what} has the unknown key {key!r}{_suggest(str(key), ('raw', 'bg_data', 'meta'))} "
                "(an image has 'raw', 'bg_data' and 'meta')"
            )
    if "raw" not in image:
        raise _KeyError(f"{what} has no 'raw' image")
    raw = _check_array(image["raw"], storage, f"{what}['raw']", None)
    bg_value = image.get("bg_data")
    bg_data: dict[str, npt.NDArray[Any]] = {}
    if bg_value is None:
        pass
    elif isinstance(bg_value, Mapping):
        for name, array in bg_value.items():
            if not isinstance(name, str) or not name or "/" in name or name == ".":
                raise ValueError(f"{what}['bg_data'] has the invalid dataset name {name!r}")
            bg_data[name] = _check_array(array, storage, f"{what}['bg_data'][{name!r}]", raw.shape)
    else:
        bg_data["data"] = _check_array(bg_value, storage, f"{what}['bg_data']", raw.shape)
    meta = _check_meta(image.get("meta"), f"{what}['meta']")
    return _CheckedImage(raw, bg_data, meta)


def _check_series(series: Any) -> tuple[str | None, Iterator[Any]]:
    if not isinstance(series, Mapping):
        raise TypeError(f"series must be a dict with 'identifier' and 'images', not {type(series).__name__}")
    for key in series:
        if key not in ("identifier", "images"):
            raise _KeyError(
                f"series has the unknown key {key!r}{_suggest(str(key), ('identifier', 'images'))} "
                "(a series has 'identifier' and 'images')"
            )
    if "images" not in series:
        raise _KeyError("series has no 'images'")
    identifier = series.get("identifier")
    if identifier is not None:
        identifier = _check_text(identifier, "series['identifier']", "a str or None")
    images = series["images"]
    if isinstance(images, (str, bytes, Mapping, np.ndarray)) or not isinstance(images, Iterable):
        raise TypeError(f"series['images'] must be an iterable of image dicts, not {type(images).__name__}")
    return identifier, iter(images)


# ---------------------------------------------------------------------------
# opening targets
# ---------------------------------------------------------------------------

_TEMP_SUFFIX = ".flimage_io-tmp"
# The HDF5 1.8 file format checksums object headers (the attributes and links),
# so damaged meta data raises instead of reading as other values; readable by
# every HDF5 since 1.8 (2008). Not 1.10: its superblock marks a file open for
# writing, and a process killed while appending would leave the file refused.
_LIBVER = ("v108", "v108")
_STALE_SECONDS = 60.0


def _is_path(h5file: Any) -> bool:
    return isinstance(h5file, (str, os.PathLike))


def _is_fileobj(h5file: Any) -> bool:
    return all(hasattr(h5file, name) for name in ("read", "seek", "tell"))


class _WriteTarget:
    """Yields a writable group and makes a failed write leave no trace.

    A new file at a path is written to a temporary file beside it and moved
    into place only when complete. An existing group, or an existing file
    opened to append, gets back the members and attributes it had before.
    """

    def __init__(self, h5file: Any, *, append: bool) -> None:
        self._append = append
        self._file: Any = None  # an h5py.File this object opened
        self._temp: str | None = None
        self._path: str | None = None
        self._file_obj: Any = None
        self._group: Any = None  # the group written to, once open
        self._members_before: set[str] | None = None  # set when writing into existing data
        self._attrs_before: set[str] = set()
        self._guard: _GuardScope | None = None
        if isinstance(h5file, h5py.Group):
            if not h5file.id.valid:
                raise ValueError("the h5py group is closed")
            if h5file.file.mode != "r+":
                raise ValueError(
                    f"{_where(h5file)} is open read-only; open the file with mode 'r+', 'a' or 'w'"
                )
            self._group = h5file
        elif _is_path(h5file):
            self._path = os.fspath(h5file)
            directory = os.path.dirname(os.path.abspath(self._path))
            if not os.path.isdir(directory):
                raise FileNotFoundError(
                    f"cannot write {self._path}: the directory {directory} does not exist"
                )
            if os.path.isdir(self._path):
                raise IsADirectoryError(f"cannot write {self._path}: it is a directory")
        elif _is_fileobj(h5file):
            if not hasattr(h5file, "write"):
                raise TypeError("the file object is not writable: it has no write method")
            self._file_obj = h5file
        else:
            raise TypeError(
                f"h5file must be a path, a binary file object or an h5py.Group, not {type(h5file).__name__}"
            )

    def __enter__(self) -> Any:
        if self._group is None:
            self._group = self._file = self._open()
        if self._temp is None:
            self._members_before = set(self._group)
            self._attrs_before = set(self._group.attrs)
            # existing text meta data are read (identifiers): guard them as reads do
            self._guard = _GuardScope(self._file_obj or self._path or self._group, _where(self._group))
        return self._group

    def _open(self) -> Any:
        if self._path is not None:
            if self._append and os.path.exists(self._path):
                return _open_existing(self._path, self._path)
            directory, base = os.path.split(os.path.abspath(self._path))
            _remove_stale_temporaries(directory, base)
            fd, self._temp = tempfile.mkstemp(prefix=f".{base}.", suffix=_TEMP_SUFFIX, dir=directory)
            os.close(fd)
            return h5py.File(self._temp, "w", libver=_LIBVER)
        handle = self._file_obj
        if self._append and handle.seek(0, os.SEEK_END) > 0:
            return _open_existing(handle, getattr(handle, "name", f"<{type(handle).__name__}>"))
        # like a path, a file object is replaced whole (h5py would keep its old bytes)
        handle.seek(0)
        handle.truncate()
        return h5py.File(handle, "w", libver=_LIBVER)

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if self._guard is not None:
            self._guard.close()
        try:
            if exc_type is not None and self._members_before is not None:
                self._undo()
        finally:
            self._close(failed=exc_type is not None)

    def _close(self, *, failed: bool) -> None:
        if self._file is None:
            return
        try:
            self._file.close()
        except BaseException:
            self._discard_temp()
            if not failed:
                raise
            return
        if self._temp is None:
            return
        if failed:
            self._discard_temp()
            return
        try:
            _fsync_path(self._temp)
            assert self._path is not None
            os.replace(self._temp, self._path)
            _fsync_path(os.path.dirname(os.path.abspath(self._path)))
        except BaseException:
            self._discard_temp()
            raise

    def _discard_temp(self) -> None:
        if self._temp is not None and os.path.exists(self._temp):
            os.unlink(self._temp)

    def _undo(self) -> None:
        """Remove what a failed write added to existing data."""
        group = self._group
        assert self._members_before is not None
        for name in set(group) - self._members_before:
            del group[name]
        for name in set(group.attrs) - self._attrs_before:
            del group.attrs[name]


def _remove_stale_temporaries(directory: str, base: str) -> None:
    """Delete temporaries a killed writer of this path left behind.

    A temporary is stale when it is older than a minute and no process holds
    HDF5's lock on it (a live writer does); files of other names are never touched.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        return
    prefix = f".{base}."
    try:
        names = [
            name for name in os.listdir(directory) if name.startswith(prefix) and name.endswith(_TEMP_SUFFIX)
        ]
    except OSError:
        return
    for name in names:
        path = os.path.join(directory, name)
        try:
            if time.time() - os.stat(path).st_mtime < _STALE_SECONDS:
                continue
            with open(path, "rb") as handle:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)  # raises while a writer holds it
            os.unlink(path)
        except OSError:
            continue


def _open_existing(h5file: Any, where: str) -> Any:
    try:
        opened = h5py.File(h5file, "r+", libver=_LIBVER)
    except OSError as exc:
        raise FormatError(f"{where} cannot be opened to append to it (not HDF5, or damaged): {exc}") from None
    _hold_metadata_until_close(opened)
    return opened


def _hold_metadata_until_close(h5: Any) -> None:
    """Keep HDF5 from writing changed metadata before the file is closed.

    New chunks go to fresh space at the end of the file, so until the close
    the file on disk still describes the old series: a process killed while
    appending leaves the series as it was. Only the final flush is at risk.
    """
    config = h5.id.get_mdc_config()
    config.incr_mode = config.decr_mode = config.flash_incr_mode = 0  # H5C_*__off
    config.evictions_enabled = False
    h5.id.set_mdc_config(config)


def _fsync_path(path: str) -> None:
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) if os.path.isdir(path) else os.O_RDONLY
    try:
        fd = os.open(path, flags)
    except OSError:  # pragma: no cover - e.g. directories on Windows
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - fsync unsupported on this file system
        pass
    finally:
        os.close(fd)


def _refuse_occupied(group: Any, *, series: bool) -> None:
    holds = [name for name in group if name == "fluorescence" or name.startswith("fli_")]
    if holds or (not series and len(group.attrs)):
        found = f"members {holds}" if holds else f"attributes {sorted(group.attrs.keys())}"
        raise ValueError(
            f"{_where(group)} already holds {found}; write a "
            f"{'series' if series else 'image'} into a new, empty group or to a path"
        )
    if series and "identifier" in group.attrs:
        raise ValueError(f"{_where(group)} already has a series identifier; write into a new, empty group")


class _ReadSource:
    """Yields (group, description); closes only a file it opened."""

    def __init__(self, h5file: Any) -> None:
        self._h5file = h5file
        self._file: Any = None
        self._where = "?"
        self._guard: _GuardScope | None = None

    def __enter__(self) -> tuple[Any, str]:
        group, where = self._open()
        self._guard = _GuardScope(self._h5file, where)
        return group, where

    def _open(self) -> tuple[Any, str]:
        h5file = self._h5file
        if isinstance(h5file, h5py.Group):
            if not h5file.id.valid:
                raise ValueError("the h5py group is closed")
            self._where = h5file.file.filename
            return h5file, self._where
        if _is_path(h5file):
            path = os.fspath(h5file)
            if not os.path.exists(path):
                raise FileNotFoundError(f"no such file: {path}")
            if os.path.isdir(path):
                raise IsADirectoryError(f"{path} is a directory, not an HDF5 file")
            with open(path, "rb"):  # raises PermissionError as such
                pass
            where = path
        elif _is_fileobj(h5file):
            where = getattr(h5file, "name", None)
            where = where if isinstance(where, str) else f"<{type(h5file).__name__}>"
        else:
            raise TypeError(
                f"h5file must be a path, a binary file object or an h5py.Group, not {type(h5file).__name__}"
            )
        try:
            self._file = h5py.File(h5file, "r")
        except Exception as exc:  # h5py raises OSError, RuntimeError, ... for damaged files
            raise FormatError(
                f"{where} is not a readable HDF5 file (empty, truncated or another format): {exc}"
            ) from None
        self._where = where
        return self._file, where

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if self._guard is not None:
            self._guard.close()
        if self._file is not None:
            self._file.close()
        if (
            exc is not None
            and isinstance(exc, Exception)
            and not isinstance(exc, (FormatError, ImageNotFoundError, MemoryError))
        ):
            # h5py reports damaged metadata as OSError, RuntimeError, KeyError, ...
            raise FormatError(f"{self._where} cannot be read, the file is damaged: {exc}") from exc


class _GuardScope:
    """Guards text reads (see _HeapGuard) over the bytes of ``h5file`` until closed."""

    def __init__(self, h5file: Any, where: str) -> None:
        self._handle, self._opened = _raw_handle(h5file)
        self._token = None if self._handle is None else _HEAP_GUARD.set(_HeapGuard(self._handle, where))

    def close(self) -> None:
        if self._token is not None:
            _HEAP_GUARD.reset(self._token)
        if self._opened:
            self._handle.close()


def _raw_handle(h5file: Any) -> tuple[Any, bool]:
    """A binary handle on the bytes of a file, for _HeapGuard, and whether it was opened here."""
    if isinstance(h5file, h5py.Group):
        name = h5file.file.filename
        if h5file.file.driver not in ("sec2", "stdio", "direct") or not os.path.isfile(name):
            return None, False  # in memory, or a file object h5py does not hand out
        h5file = name
    if _is_path(h5file):
        return open(h5file, "rb"), True
    return (h5file, False) if _is_fileobj(h5file) else (None, False)


def _at(source: str, node: Any) -> str:
    """'file.h5:/fli_3/fluorescence/raw', or just the file for its root."""
    return source if node.name == "/" else f"{source}:{node.name}"


def _where(group: Any) -> str:
    try:
        return f"{group.file.filename}:{group.name}"
    except Exception:  # pragma: no cover - closed or anonymous objects
        return repr(group)


# ---------------------------------------------------------------------------
# layout
# ---------------------------------------------------------------------------

_SERIES_NAME = re.compile(r"fli_(0|[1-9][0-9]*)\Z")


def _layout_of(group: Any, where: str) -> str:
    """'image' or 'series'; anything else raises FormatError."""
    if "fluorescence" in group:
        return "image"
    names = list(group.keys())
    if not names or any(name.startswith("fli_") for name in names):
        return "series"
    raise FormatError(
        f"{where} holds neither an FLImage (no 'fluorescence' group) nor an FLSeries "
        f"(no 'fli_' groups); found members {sorted(names)[:10]}"
    )


def _series_names(group: Any, where: str) -> list[str]:
    """The 'fli_N' names in numeric order, checked for gaps and leading zeros."""
    numbers: list[int] = []
    for name in group:
        if not name.startswith("fli_"):
            continue
        match = _SERIES_NAME.match(name)
        if match is None:
            raise FormatError(
                f"{where} has the member {name!r}, which is no valid series name (fli_0, fli_1, ...)"
            )
        numbers.append(int(match.group(1)))
    numbers.sort()
    for expected, found in enumerate(numbers):
        if expected != found:
            raise FormatError(
                f"{where} is a series with a gap in its numbering: 'fli_{expected}' is missing "
                f"({len(numbers)} images, the largest is 'fli_{numbers[-1]}')"
            )
    return [f"fli_{n}" for n in numbers]


def _series_length(group: Any, where: str) -> int:
    """Length of a series, without listing every member when the count of
    links already proves it (a series of only 'fli_0' .. 'fli_{n-1}')."""
    count = len(group)
    if count and f"fli_{count - 1}" in group and f"fli_{count}" not in group and "fli_0" in group:
        return count
    return len(_series_names(group, where))


def _find_image(group: Any, source: str, index: int | str) -> str:
    where = _at(source, group)
    count = _series_length(group, where)
    if isinstance(index, int):
        position = index + count if index < 0 else index
        if not 0 <= position < count:
            raise ImageNotFoundError(f"{where} has {count} images; index {index} is out of range")
        name = f"fli_{position}"
        if name not in group:
            _series_names(group, where)  # raises on the gap that hides it
        return name
    # Reading an identifier costs an object header per image, so first try
    # the positions that numbers in the identifier suggest ("frame-0500"
    # is usually fli_500 or fli_499), then scan the whole series.
    numbers = [int(digits) for digits in re.findall(r"[0-9]+", index)[-3:]]
    guesses = [n - shift for n in reversed(numbers) for shift in (0, 1) if 0 <= n - shift < count]
    for position in dict.fromkeys(guesses):
        if _identifier_of(group, f"fli_{position}", source) == index:
            return f"fli_{position}"
    found = [name for name in _series_names(group, where) if _identifier_of(group, name, source) == index]
    if not found:
        raise ImageNotFoundError(f"{where} has no image with identifier {index!r}")
    if len(found) > 1:
        raise FormatError(f"{where} has {len(found)} images with identifier {index!r}: {found}")
    return found[0]


def _member(group: Any, name: str) -> Any:
    """The member, or None when there is no such link.

    Unlike ``group.get``, which returns None for a member that fails to open,
    this lets a damaged member raise.
    """
    return group[name] if name in group else None  # noqa: SIM401 - .get hides damage


def _identifier_of(group: Any, name: str, source: str) -> str | None:
    image = _member(group, name)
    if not isinstance(image, h5py.Group) or "identifier" not in image.attrs:
        return None
    return _read_text_attr(image, "identifier", _at(source, image))


def _read_text_attr(group: Any, key: str, where: str) -> str:
    _guard_text(group)
    return _as_text(group.attrs[key], key, where)


def _as_text(value: Any, key: str, where: str) -> str:
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value[()]
    if isinstance(value, (bytes, np.bytes_)):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            raise FormatError(f"{where} attribute {key!r} is not valid UTF-8 text: {value!r}") from None
    if isinstance(value, str):
        return value
    raise FormatError(f"{where} attribute {key!r} must be text, but holds {type(value).__name__} {value!r}")


def _read_meta(group: Any, where: str) -> dict[str, MetaValue]:
    _guard_text(group)
    return {key: _meta_value(group, key, where) for key in group.attrs}


def _meta_value(group: Any, key: str, where: str) -> MetaValue:
    """One meta data attribute as plain Python, or FormatError."""
    if key not in META_KEYS:
        raise FormatError(f"{where} has the unknown meta data attribute {key!r}{_suggest(key, META_KEYS)}")
    if key in TEXT_KEYS:
        return _read_text_attr(group, key, where)
    value = np.asarray(group.attrs[key])
    if value.dtype.kind not in "iuf":
        raise FormatError(f"{where} attribute {key!r} must hold numbers, but holds {value.dtype} {value!r}")
    if key in NUMBER_KEYS:
        if value.size != 1 or value.ndim > 1:
            raise FormatError(f"{where} attribute {key!r} must be one number, but has shape {value.shape}")
        return float(value.reshape(()))
    return tuple(float(v) for v in value.ravel())


# ---------------------------------------------------------------------------
# global heap guard
# ---------------------------------------------------------------------------

# HDF5 keeps variable-length strings (the text meta data) in "global heap
# collections", which carry no checksum, and its parser loops forever on a
# collection whose object list does not advance (a zeroed block, for one).
# So before text attributes are read, the collections they point to are walked
# here, and a malformed one raises FormatError. Structures this code does not
# parse (dense attribute storage, 4-byte addresses) are left to HDF5.

_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_UNDEFINED_ADDRESS = 2**64 - 1


class _Unparsed(Exception):
    """A structure the guard does not parse: leave it to HDF5."""


def _u(data: bytes, start: int, size: int) -> int:
    return int.from_bytes(data[start : start + size], "little")


class _HeapGuard:
    def __init__(self, handle: Any, where: str) -> None:
        self._handle = handle
        self._where = where
        self._base: int | None = None
        self._objects: set[int] = set()
        self._collection_objects: dict[int, dict[int, int]] = {}

    def check(self, node: Any) -> None:
        """Raise FormatError if a text attribute of ``node`` points into a damaged collection.

        Only a clean object is remembered: a damaged one raises on every check.
        """
        try:
            address = int(h5py.h5o.get_info(node.id).addr)
        except Exception:  # e.g. an h5py without .addr
            return
        if address in self._objects:
            return
        try:
            if self._base is None:
                self._base = self._find_base()
            references = [
                ref for kind, body in self._messages(address) for ref in _heap_references(kind, body)
            ]
            for collection, index, length in references:
                self._check_collection(collection, index, length)
        except (_Unparsed, IndexError):
            pass  # not parsed here: HDF5 reads it unchecked
        self._objects.add(address)

    def _read(self, address: int, size: int) -> bytes:
        self._handle.seek((self._base or 0) + address)
        data: bytes = self._handle.read(size)
        return data

    def _find_base(self) -> int:
        for offset in (0, 512, 1024, 2048, 4096, 8192):
            self._handle.seek(offset)
            head = self._handle.read(16)
            if head[:8] == _HDF5_SIGNATURE:
                sizes = head[13:15] if head[8] in (0, 1) else head[9:11]
                if sizes != b"\x08\x08":
                    raise _Unparsed
                return offset
        raise _Unparsed

    def _messages(self, address: int) -> Iterator[tuple[int, bytes]]:
        """(type, body) of every message of the object header at ``address``."""
        head = self._read(address, 16)
        if head[:4] == b"OHDR":
            if head[4] != 2:
                raise _Unparsed
            flags = head[5]
            start = 6 + (16 if flags & 0x20 else 0) + (4 if flags & 0x10 else 0)
            width = 1 << (flags & 0x03)
            length = _u(self._read(address + start, width), 0, width)
            blocks = [(address + start + width, length, False)]
            version, prefix = 2, 4 + (2 if flags & 0x04 else 0)
        elif head[:1] == b"\x01":
            blocks = [(address + 16, _u(head, 8, 4), False)]
            version, prefix = 1, 8
        else:
            raise _Unparsed
        count = 0
        while blocks:
            start, length, continued = blocks.pop()
            count += 1
            if count > 64 or length > 1 << 20:
                raise _Unparsed
            body = self._read(start, length)
            if continued and version == 2:
                if body[:4] != b"OCHK":
                    raise _Unparsed
                body = body[4:-4]
            position = 0
            while position + prefix <= len(body):
                kind = body[position] if version == 2 else _u(body, position, 2)
                size = _u(body, position + (1 if version == 2 else 2), 2)
                message = body[position + prefix : position + prefix + size]
                position += prefix + size
                if kind == 0x10:  # continuation: another block of messages
                    blocks.append((_u(message, 0, 8), _u(message, 8, 8), True))
                elif (
                    kind == 0x15
                    and len(message) >= 10
                    and _u(message, 2 + 2 * (message[1] & 1), 8) != _UNDEFINED_ADDRESS
                ):
                    raise _Unparsed  # attributes in dense storage (a fractal heap)
                else:
                    yield kind, message

    def _check_collection(self, address: int, index: int, length: int) -> None:
        if address not in self._collection_objects:
            head = self._read(address, 16)
            size = _u(head, 8, 8)
            if head[:4] != b"GCOL" or not 16 <= size <= 1 << 32:
                raise FormatError(f"{self._where}: the global heap collection at {address} is damaged")
            data = self._read(address, size)
            position, objects = 16, {}  # object index -> its size in bytes
            while position + 16 <= len(data):
                number, stored = _u(data, position, 2), _u(data, position + 8, 8)
                need = stored if number == 0 else 16 + ((stored + 7) & ~7)
                if need == 0 or position + need > size:  # HDF5 would loop, or read past the end
                    raise FormatError(
                        f"{self._where}: the global heap collection at {address}, which holds "
                        "text meta data, is damaged"
                    )
                objects[number] = stored
                position += need
            self._collection_objects[address] = objects
        # a string's length is its size in bytes; other sequences are longer in bytes
        if length > self._collection_objects[address].get(index, -1):
            raise FormatError(f"{self._where}: text meta data point to a missing or short global heap object")


def _heap_references(kind: int, message: bytes) -> list[tuple[int, int, int]]:
    """(collection address, object index, length) of the variable-length data of an attribute message."""
    if kind != 0x0C:
        return []
    version = message[0]
    if version not in (1, 2, 3):
        raise _Unparsed
    sizes = [_u(message, 2, 2), _u(message, 4, 2), _u(message, 6, 2)]  # name, datatype, dataspace
    position = 9 if version == 3 else 8
    parts = []
    for size in sizes:
        parts.append(message[position : position + size])
        position += (size + 7) & ~7 if version == 1 else size
    datatype, dataspace, data = parts[1], parts[2], message[position:]
    if datatype[0] & 0x0F != 9:  # not variable-length: stored in the header itself
        return []
    rank = dataspace[1]
    if dataspace[0] == 2 and dataspace[3] == 2:  # null dataspace
        return []
    offset = 8 if dataspace[0] == 1 else 4
    count = 1
    for axis in range(rank):
        count *= _u(dataspace, offset + 8 * axis, 8)
    if count > 1 << 16 or len(data) < 16 * count:
        raise _Unparsed
    references = []
    for element in range(count):
        length = _u(data, 16 * element, 4)
        address, index = _u(data, 16 * element + 4, 8), _u(data, 16 * element + 12, 4)
        if address not in (0, _UNDEFINED_ADDRESS):
            references.append((address, index, length))
    return references


_HEAP_GUARD: contextvars.ContextVar[_HeapGuard | None] = contextvars.ContextVar(
    "flimage_io_heap_guard", default=None
)


def _guard_text(node: Any) -> None:
    guard = _HEAP_GUARD.get()
    if guard is not None:
        guard.check(node)


# ---------------------------------------------------------------------------
# chunk codec: shuffle, deflate and fletcher32 exactly as HDF5's filters
# ---------------------------------------------------------------------------

_FILTER_DEFLATE = 1
_FILTER_SHUFFLE = 2
_FILTER_FLETCHER32 = 3
# HDF5 refuses chunks of 4 GiB or more; keep a margin for deflate's worst case.
_MAX_CHUNK_BYTES = 2**32 - 2**24
_FLETCHER_BLOCK = 1 << 20
_FLETCHER_WEIGHTS = np.arange(_FLETCHER_BLOCK, 0, -1, dtype=np.uint64)


def _zlib() -> ModuleType:
    """The deflate implementation: zlib-ng when installed, else the stdlib."""
    return _zlib_ng if _zlib_ng is not None else zlib


def _fletcher32(data: bytes | memoryview) -> int:
    """HDF5's H5_checksum_fletcher32 over big-endian 16-bit words.

    The C code folds its sums modulo 65535 with end-around carry, so a sum is
    0 only when every word is 0 and otherwise lies in 1..65535: that is
    ``(s - 1) % 65535 + 1`` of the exact sum ``s``, computed here blockwise.
    """
    length = len(data)
    words = np.frombuffer(data, dtype=">u2", count=length // 2)
    sum1 = sum2 = 0
    nonzero = False
    for start in range(0, len(words), _FLETCHER_BLOCK):
        block = words[start : start + _FLETCHER_BLOCK].astype(np.uint64)
        size = len(block)
        block_sum = int(block.sum())
        # each word is added to sum2 once for every word from it to the end
        weighted = int(np.dot(block, _FLETCHER_WEIGHTS[_FLETCHER_BLOCK - size :]))
        sum2 = (sum2 + size * sum1 + weighted) % 65535
        sum1 = (sum1 + block_sum) % 65535
        nonzero = nonzero or block_sum != 0
    if length % 2:
        last = data[-1] << 8
        sum1 = (sum1 + last) % 65535
        sum2 = (sum2 + sum1) % 65535
        nonzero = nonzero or last != 0
    if not nonzero:
        return 0
    return ((((sum2 - 1) % 65535) + 1) << 16) | (((sum1 - 1) % 65535) + 1)


def _fletcher32_matches(stored: int, computed: int) -> bool:
    # HDF5 before 1.6.3 stored the checksum with bytes swapped in each half;
    # HDF5 still accepts that form, so do we.
    swapped = ((computed & 0x00FF00FF) << 8) | ((computed >> 8) & 0x00FF00FF)
    return stored in (computed, swapped)


def _shuffle(chunk: npt.NDArray[Any]) -> npt.NDArray[Any]:
    itemsize = chunk.dtype.itemsize
    flat = np.ascontiguousarray(chunk).reshape(-1).view(np.uint8)
    if itemsize == 1:
        return flat
    return np.ascontiguousarray(flat.reshape(-1, itemsize).T).reshape(-1)


def _unshuffle(data: bytes | memoryview, itemsize: int) -> bytes | memoryview | npt.NDArray[Any]:
    if itemsize == 1:
        return data
    planes = np.frombuffer(data, dtype=np.uint8)
    count = len(planes) // itemsize
    out = np.empty(len(planes), dtype=np.uint8)
    elements = out[: count * itemsize].reshape(count, itemsize)
    # one strided copy per byte plane: about 3x faster than a transposed copy
    for byte, plane in enumerate(planes[: count * itemsize].reshape(itemsize, count)):
        elements[:, byte] = plane
    out[count * itemsize :] = planes[count * itemsize :]  # HDF5 leaves a tail as is
    return out


class _Codec(NamedTuple):
    compress: bool
    level: int | None
    shuffle: bool


def _encode_chunk(chunk: npt.NDArray[Any], codec: _Codec) -> bytes:
    """Apply the pipeline shuffle -> deflate -> fletcher32, as HDF5 would."""
    data: Any = _shuffle(chunk) if codec.shuffle else np.ascontiguousarray(chunk).reshape(-1).view(np.uint8)
    if codec.compress:
        encoder = _compressor(codec, 15)
        data = encoder.compress(data) + encoder.flush()
    else:
        data = data.tobytes()
    return bytes(data) + _fletcher32(data).to_bytes(4, "little")


# A chunk above this size is deflated in segments, one task each, so that one
# big image uses every core. Segments end in a sync flush (byte-aligned, no
# final bit), so their concatenation is one ordinary deflate stream.
_SPLIT_BYTES = 8 << 20


def _compressor(codec: _Codec, wbits: int) -> Any:
    """A deflate encoder for ``codec``: wbits 15 writes a zlib stream, -15 raw deflate."""
    backend = _zlib()
    if codec.level is None:
        # run-length deflate: on shuffled images both faster and smaller than level 1
        return backend.compressobj(1, backend.DEFLATED, wbits, 8, backend.Z_RLE)
    return backend.compressobj(codec.level, backend.DEFLATED, wbits, 8, backend.Z_DEFAULT_STRATEGY)


def _deflate_segment(data: Any, codec: _Codec, final: bool) -> tuple[bytes, int, int]:
    """Raw deflate of one segment, its adler32 and its length."""
    encoder = _compressor(codec, -15)
    backend = _zlib()
    out = encoder.compress(data) + encoder.flush(backend.Z_FINISH if final else backend.Z_SYNC_FLUSH)
    return out, zlib.adler32(data), len(data)


def _adler32_combine(first: int, second: int, second_length: int) -> int:
    """adler32 of two buffers joined, from theirs (zlib's adler32_combine)."""
    base = 65521
    remainder = second_length % base
    sum1 = ((first & 0xFFFF) + (second & 0xFFFF) + base - 1) % base
    sum2 = ((remainder * (first & 0xFFFF)) + (first >> 16) + (second >> 16) + base - remainder) % base
    return (sum2 << 16) | sum1


class _SegmentedChunk:
    """A chunk deflated in segments by the pool, joined into one zlib stream."""

    def __init__(
        self, segments: list[concurrent.futures.Future[tuple[bytes, int, int]]], codec: _Codec
    ) -> None:
        self._segments = segments
        self._codec = codec

    def result(self) -> bytes:
        header = _compressor(self._codec, 15).flush()[:2]  # the 2-byte zlib header zlib writes
        parts = [segment.result() for segment in self._segments]
        checksum = parts[0][1]
        for _, adler, length in parts[1:]:
            checksum = _adler32_combine(checksum, adler, length)
        stream = b"".join([header, *(data for data, _, _ in parts), checksum.to_bytes(4, "big")])
        return stream + _fletcher32(stream).to_bytes(4, "little")

    def cancel(self) -> None:
        for segment in self._segments:
            segment.cancel()


def _decode_chunk(
    stored: bytes,
    mask: int,
    filters: tuple[int, ...],
    dtype: np.dtype[Any],
    shape: tuple[int, ...],
    what: str,
) -> npt.NDArray[Any]:
    """Undo the pipeline in reverse order, verifying the checksum."""
    data: Any = stored
    expected = int(np.prod(shape)) * dtype.itemsize
    for position in reversed(range(len(filters))):
        code = filters[position]
        if mask & (1 << position):
            # HDF5 skips only an optional filter that failed on a chunk; shuffle
            # cannot fail and fletcher32 is mandatory, so such a mark means the
            # (unchecksummed) chunk index is damaged.
            if code != _FILTER_DEFLATE:
                raise FormatError(
                    f"{what}: a chunk is marked as stored without a filter that cannot be skipped"
                )
            continue
        if code == _FILTER_FLETCHER32:
            if len(data) < 4:
                raise FormatError(f"{what}: stored chunk of {len(data)} bytes is too short for its checksum")
            stored_sum = int.from_bytes(bytes(data[-4:]), "little")
            data = memoryview(data)[:-4]
            if not _fletcher32_matches(stored_sum, _fletcher32(data)):
                raise FormatError(
                    f"{what}: the fletcher32 checksum of a chunk does not match (the file is damaged)"
                )
        elif code == _FILTER_DEFLATE:
            try:
                data = _zlib().decompress(data, 15, expected)
            except zlib.error as exc:
                raise FormatError(f"{what}: a chunk does not inflate ({exc}); the file is damaged") from None
            except Exception as exc:  # zlib-ng raises its own error class
                raise FormatError(f"{what}: a chunk does not inflate ({exc}); the file is damaged") from None
        else:  # shuffle
            data = _unshuffle(data, dtype.itemsize)
    if len(data) != expected:
        raise FormatError(
            f"{what}: a chunk holds {len(data)} bytes, expected {expected}; the file is damaged"
        )
    return np.frombuffer(data, dtype=dtype).reshape(shape)


# ---------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------


def _chunk_rows(shape: tuple[int, ...], itemsize: int) -> int:
    """Whole-image chunks, split into row blocks only past HDF5's limit."""
    row_bytes = shape[1] * itemsize
    if row_bytes > _MAX_CHUNK_BYTES:
        raise ValueError(
            f"image rows of {row_bytes} bytes exceed HDF5's chunk limit of 4 GiB (shape {shape})"
        )
    return min(shape[0], _MAX_CHUNK_BYTES // row_bytes)


class _PendingDataset(NamedTuple):
    name: str
    dtype: np.dtype[Any]
    shape: tuple[int, ...]
    chunk_rows: int
    chunks: list[Any]  # futures of the stored bytes: concurrent.futures.Future or _SegmentedChunk


class _PendingImage(NamedTuple):
    parent: Any
    name: str | None
    meta: dict[str, Any]
    raw: _PendingDataset
    bg_data: list[_PendingDataset]


class _InlineExecutor(concurrent.futures.Executor):
    """Runs tasks at once in the calling thread (workers=1)."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> concurrent.futures.Future[Any]:
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:
            future.set_exception(exc)
        return future


def _executor(workers: int) -> concurrent.futures.Executor:
    if workers == 1:
        return _InlineExecutor()
    return concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="flimage_io")


class _ChunkWriter:
    """Encodes chunks in worker threads while the calling thread, the only
    one that calls h5py, stores finished chunks in order. At most a few
    images are in flight, so memory stays bounded for any series length."""

    def __init__(self, options: _Options) -> None:
        self._options = options
        self._codec = _Codec(options.compress, options.level, options.shuffle)
        self._pool = _executor(options.workers)
        self._pending: collections.deque[_PendingImage] = collections.deque()
        self._limit = 2 * options.workers

    def __enter__(self) -> _ChunkWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        try:
            if exc_type is None:
                while self._pending:
                    self._store(self._pending.popleft())
        finally:
            for pending in self._pending:
                for dataset in (pending.raw, *pending.bg_data):
                    for future in dataset.chunks:
                        future.cancel()
            self._pending.clear()
            self._pool.shutdown(wait=True)

    def add_image(self, parent: Any, name: str | None, image: _CheckedImage) -> None:
        raw = self._submit("raw", image.raw)
        bg_data = [self._submit(key, array) for key, array in image.bg_data.items()]
        self._pending.append(_PendingImage(parent, name, image.meta, raw, bg_data))
        while len(self._pending) > self._limit:
            self._store(self._pending.popleft())

    def _submit(self, name: str, array: npt.NDArray[Any]) -> _PendingDataset:
        dtype = _storage_dtype(array.dtype, self._options.dtype)
        rows = _chunk_rows(array.shape, dtype.itemsize)
        chunks: list[Any] = []
        for start in range(0, array.shape[0], rows):
            block = array[start : start + rows]
            if block.shape[0] < rows:  # HDF5 stores edge chunks at full size
                padded = np.zeros((rows, array.shape[1]), dtype=dtype)
                padded[: block.shape[0]] = block
                block = padded
            if (
                self._codec.compress
                and self._options.workers > 1
                and block.size * dtype.itemsize > _SPLIT_BYTES
            ):
                chunks.append(self._submit_segments(np.ascontiguousarray(block, dtype=dtype)))
            else:
                chunks.append(self._pool.submit(_convert_and_encode, block, dtype, self._codec))
        return _PendingDataset(name, dtype, array.shape, rows, chunks)

    def _submit_segments(self, chunk: npt.NDArray[Any]) -> _SegmentedChunk:
        data = (_shuffle(chunk) if self._codec.shuffle else chunk).reshape(-1).view(np.uint8)
        size = max(_SPLIT_BYTES // 2, -(-data.size // (4 * self._options.workers)))
        bounds = [*range(0, data.size, size), data.size]
        segments = [
            self._pool.submit(_deflate_segment, data[low:high], self._codec, high == data.size)
            for low, high in zip(bounds[:-1], bounds[1:])
        ]
        return _SegmentedChunk(segments, self._codec)

    def _store(self, pending: _PendingImage) -> None:
        group = pending.parent if pending.name is None else pending.parent.create_group(pending.name)
        for key, value in pending.meta.items():
            group.attrs[key] = value
        fluorescence = group.create_group("fluorescence")
        self._store_dataset(fluorescence, pending.raw)
        background = fluorescence.create_group("bg_data")
        for dataset in pending.bg_data:
            self._store_dataset(background, dataset)

    def _store_dataset(self, group: Any, pending: _PendingDataset) -> None:
        options = self._options
        dataset = group.create_dataset(
            pending.name,
            shape=pending.shape,
            dtype=pending.dtype,
            chunks=(pending.chunk_rows, pending.shape[1]),
            compression="gzip" if options.compress else None,
            compression_opts=(1 if options.level is None else options.level) if options.compress else None,
            shuffle=options.shuffle,
            fletcher32=True,
        )
        for number, future in enumerate(pending.chunks):
            dataset.id.write_direct_chunk((number * pending.chunk_rows, 0), future.result(), 0)
        # HDFView shows the dataset as a grayscale image
        dataset.attrs.create("CLASS", np.bytes_("IMAGE"))
        dataset.attrs.create("IMAGE_VERSION", np.bytes_("1.2"))
        dataset.attrs.create("IMAGE_SUBCLASS", np.bytes_("IMAGE_GRAYSCALE"))


def _convert_and_encode(block: npt.NDArray[Any], dtype: np.dtype[Any], codec: _Codec) -> bytes:
    return _encode_chunk(np.ascontiguousarray(block, dtype=dtype), codec)


# ---------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------


class _Done(NamedTuple):
    value: Any

    def result(self) -> Any:
        return self.value


class _PendingRead(NamedTuple):
    meta: dict[str, MetaValue]
    raw: Any
    bg_data: dict[str, Any]

    def result(self) -> Image:
        return {
            "raw": self.raw.result(),
            "bg_data": {name: value.result() for name, value in self.bg_data.items()},
            "meta": self.meta,
        }


class _AssembledDataset:
    """A dataset whose chunks decode in worker threads."""

    def __init__(self, shape: tuple[int, ...], dtype: np.dtype[Any]) -> None:
        self.out = np.empty(shape, dtype=dtype.newbyteorder("="))
        self.parts: list[tuple[tuple[slice, ...], concurrent.futures.Future[npt.NDArray[Any]]]] = []

    def result(self) -> npt.NDArray[Any]:
        if len(self.parts) == 1 and self.parts[0][0] == tuple(slice(0, n) for n in self.out.shape):
            chunk = self.parts[0][1].result()  # one whole-image chunk: skip the copy when possible
            if chunk.shape == self.out.shape and chunk.flags.writeable and chunk.dtype.isnative:
                self.parts.clear()
                self.out = chunk
                return chunk
        for slices, future in self.parts:
            chunk = future.result()
            self.out[slices] = chunk[tuple(slice(0, s.stop - s.start) for s in slices)]
        self.parts.clear()
        return self.out


class _ChunkReader:
    def __init__(self, workers: int) -> None:
        self._pool = _executor(workers)

    def __enter__(self) -> _ChunkReader:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self._pool.shutdown(wait=True)

    def read_image(self, group: Any, source: str) -> _PendingRead:
        where = _at(source, group)
        if not isinstance(group, h5py.Group):
            raise FormatError(f"{where} should be an FLImage group, but is {type(group).__name__}")
        meta = _read_meta(group, where)
        fluorescence = _member(group, "fluorescence")
        if not isinstance(fluorescence, h5py.Group):
            raise FormatError(f"{where} has no 'fluorescence' group, so it is no FLImage")
        raw_node = _member(fluorescence, "raw")
        if not isinstance(raw_node, h5py.Dataset):
            raise FormatError(f"{_at(source, fluorescence)} has no 'raw' dataset")
        raw = self._read_dataset(raw_node, _at(source, raw_node), None)
        bg_data: dict[str, Any] = {}
        background = _member(fluorescence, "bg_data")
        if background is not None:
            if not isinstance(background, h5py.Group):
                raise FormatError(f"{_at(source, background)} should be a group")
            for name in background:
                node = background[name]
                what = _at(source, node)
                if not isinstance(node, h5py.Dataset):
                    raise FormatError(f"{what} should be a dataset")
                bg_data[name] = self._read_dataset(node, what, raw_node.shape)
        return _PendingRead(meta, raw, bg_data)

    def _read_dataset(self, dataset: Any, what: str, shape: tuple[int, ...] | None) -> Any:
        dtype = dataset.dtype
        if dtype.kind not in _STORABLE_KINDS or dtype.itemsize > 8:
            raise FormatError(f"{what} must hold real numbers or bools, but has dtype {dtype}")
        if shape is None and (dataset.ndim != 2 or dataset.size == 0):
            raise FormatError(f"{what} must be a non-empty 2-D image, but has shape {dataset.shape}")
        if shape is not None and dataset.shape != shape:
            raise FormatError(f"{what} has shape {dataset.shape}, but raw has shape {shape}")
        filters = _decodable_filters(dataset)
        if filters is None:
            return _Done(_read_with_h5py(dataset, what))
        assembled = _AssembledDataset(dataset.shape, dtype)
        chunk_shape = tuple(dataset.chunks)
        grid = [range(0, size, step) for size, step in zip(dataset.shape, chunk_shape)]
        for offset in itertools.product(*grid):
            try:
                mask, stored = dataset.id.read_direct_chunk(offset)
            except (OSError, RuntimeError, KeyError, ValueError) as exc:
                # Writers of this layout store every chunk: a missing one means a
                # damaged index or an unfinished write, not a fill value to return.
                raise FormatError(f"{what}: the chunk at {offset} cannot be read ({exc})") from None
            slices = tuple(slice(o, min(o + c, s)) for o, c, s in zip(offset, chunk_shape, dataset.shape))
            future = self._pool.submit(_decode_chunk, stored, mask, filters, dtype, chunk_shape, what)
            assembled.parts.append((slices, future))
        return assembled


def _decodable_filters(dataset: Any) -> tuple[int, ...] | None:
    """The filters of a chunked dataset if we can decode them all, else None."""
    if dataset.chunks is None or not hasattr(dataset.id, "read_direct_chunk"):
        return None
    plist = dataset.id.get_create_plist()
    filters = []
    for position in range(plist.get_nfilters()):
        code = plist.get_filter(position)[0]
        if code not in (_FILTER_DEFLATE, _FILTER_SHUFFLE, _FILTER_FLETCHER32):
            return None  # lzf, szip, scale-offset, plugins: h5py decodes them
        filters.append(code)
    return tuple(filters)


def _read_with_h5py(dataset: Any, what: str) -> npt.NDArray[Any]:
    try:
        data = np.asarray(dataset[()])
    except (OSError, RuntimeError, ValueError) as exc:
        raise FormatError(f"{what} cannot be read ({exc}); the file is damaged") from None
    return data.astype(data.dtype.newbyteorder("="), copy=False)


# ---------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------


def _demo(path: str | None) -> int:
    """Write a small sample series and print what was read back."""
    rng = np.random.default_rng(7)
    rows, cols = np.mgrid[0:64, 0:96]
    blob = 100 + 2000 * np.exp(-((rows - 32) ** 2 + (cols - 48) ** 2) / (2 * 12.0**2))
    images = (
        {
            "raw": rng.poisson(blob * math.exp(-0.1 * t)).astype(np.float64),
            "bg_data": np.full(blob.shape, 100.0),
            "meta": {"pixel size": 1.4e-7, "time": 0.5 * t, "identifier": f"frame {t}"},
        }
        for t in range(5)
    )
    with tempfile.TemporaryDirectory() as scratch:
        target = path or os.path.join(scratch, "demo_series.h5")
        write_series(target, {"identifier": "demo run", "images": images})
        series = read_series(target)
        print(f"wrote {target} ({os.path.getsize(target)} bytes) and read it back:")
        print(f"series identifier: {series['identifier']!r}, {len(series['images'])} images")
        for position, image in enumerate(series["images"]):
            corrected = image["raw"] - sum(image["bg_data"].values())
            meta = image["meta"]
            print(
                f"  fli_{position}: {meta['identifier']!r} raw {image['raw'].shape} {image['raw'].dtype}, "
                f"time {meta['time']} s, pixel size {meta['pixel size']} m, "
                f"mean corrected intensity {corrected.mean():.1f}"
            )
        one = read_image(target, index="frame 3")
        print(f"read_image(path, index='frame 3'): time {one['meta']['time']} s")
    return 0


def _check_file(h5file: Target) -> list[str]:
    """Every problem found in a file, checked against the layout; [] when clean."""
    problems: list[str] = []
    try:
        with _ReadSource(h5file) as (group, source):
            where = _at(source, group)
            names = list(group)
            if "fluorescence" in group:
                _check_image_group(group, source, problems)
            elif names and not any(name.startswith("fli_") for name in names):
                problems.append(
                    f"{where} holds neither an FLImage nor an FLSeries; found members {sorted(names)[:10]}"
                )
            else:
                _check_series_group(group, source, problems)
    except (FileNotFoundError, IsADirectoryError, PermissionError, FormatError) as exc:
        problems.append(str(exc))
    return list(dict.fromkeys(problems))  # one damage can surface in several places


def _check_series_group(group: Any, source: str, problems: list[str]) -> None:
    where = _at(source, group)
    for key in group.attrs:
        if key != "identifier":
            problems.append(f"{where} has the attribute {key!r}; a series root holds only 'identifier'")
    if "identifier" in group.attrs:
        try:
            _read_text_attr(group, "identifier", where)
        except FormatError as exc:
            problems.append(str(exc))
    numbers: list[int] = []
    for name in group:
        if not name.startswith("fli_"):
            problems.append(f"{where} has the member {name!r}, which is not part of an FLSeries")
        elif _SERIES_NAME.match(name) is None:
            problems.append(
                f"{where} has the member {name!r}, which is no valid series name (fli_0, fli_1, ...)"
            )
        else:
            numbers.append(int(name[4:]))
    missing = sorted(set(range(max(numbers, default=-1) + 1)) - set(numbers))
    if missing:
        shown = ", ".join(f"fli_{n}" for n in missing[:10]) + (" ..." if len(missing) > 10 else "")
        problems.append(f"{where} has gaps in its numbering: missing {shown} (flimage fails on them)")
    owners: dict[str, list[str]] = {}
    for number in sorted(numbers):
        name = f"fli_{number}"
        _check_image_group(group[name], source, problems)
        try:
            identifier = _identifier_of(group, name, source)
        except FormatError:
            continue  # reported with the image's meta data
        if identifier is not None:
            owners.setdefault(identifier, []).append(name)
    for identifier, owner in owners.items():
        if len(owner) > 1:
            problems.append(f"{where} has the identifier {identifier!r} on {len(owner)} images: {owner}")


def _check_image_group(group: Any, source: str, problems: list[str]) -> None:
    where = _at(source, group)
    if not isinstance(group, h5py.Group):
        problems.append(f"{where} should be an FLImage group, but is {type(group).__name__}")
        return
    for key in group.attrs:
        try:
            _meta_value(group, key, where)
        except FormatError as exc:
            problems.append(str(exc))
    for key in ("flimage version", "qpimage version"):
        if key not in group.attrs:
            problems.append(f"{where} lacks the attribute {key!r}: flimage cannot open it read-only")
    fluorescence = _member(group, "fluorescence")
    if not isinstance(fluorescence, h5py.Group):
        problems.append(f"{where} has no 'fluorescence' group")
        return
    if len(fluorescence.attrs):
        problems.append(
            f"{_at(source, fluorescence)} has attributes {sorted(fluorescence.attrs)}; it should have none"
        )
    if "bg_data" not in fluorescence:
        problems.append(
            f"{_at(source, fluorescence)} has no 'bg_data' group: flimage cannot open it read-only"
        )
    with _ChunkReader(1) as reader:
        try:
            reader.read_image(group, source).result()  # shapes, dtypes, every checksum
        except FormatError as exc:
            problems.append(str(exc))


# A damaged global heap (where HDF5 keeps text) can make the HDF5 library loop
# forever; `check` is for suspicious files, so it runs in a child it can stop.
_CHECK_BASE_SECONDS = 60.0
_CHECK_SECONDS_PER_MIB = 0.5


def _check_file_guarded(name: str) -> list[str]:
    """:func:`_check_file` in a forked child process, stopped if it takes too long."""
    import multiprocessing

    if "fork" not in multiprocessing.get_all_start_methods():  # pragma: no cover - not POSIX
        return _check_file(name)
    try:
        size = os.path.getsize(name) / 2**20
    except OSError:
        size = 0.0
    limit = _CHECK_BASE_SECONDS + _CHECK_SECONDS_PER_MIB * size
    context = multiprocessing.get_context("fork")
    receiver, sender = context.Pipe(duplex=False)
    child = context.Process(target=_check_into, args=(name, sender), daemon=True)
    child.start()
    sender.close()
    try:
        if receiver.poll(limit):
            problems: list[str] = receiver.recv()
            return problems
        return [
            f"{name}: checking took over {limit:.0f} s and was stopped; HDF5 may be looping on damaged data"
        ]
    except EOFError:
        return [f"{name}: the check crashed (exit code {child.exitcode}); the file is damaged"]
    finally:
        if child.is_alive():
            child.kill()
        child.join()
        receiver.close()


def _check_into(name: str, sender: Any) -> None:
    sender.send(_check_file(name))
    sender.close()


def _describe_filters(dataset: Any) -> str:
    names = {_FILTER_DEFLATE: "gzip", _FILTER_SHUFFLE: "shuffle", _FILTER_FLETCHER32: "fletcher32"}
    plist = dataset.id.get_create_plist()
    filters = []
    for position in range(plist.get_nfilters()):
        code, _, values, name = plist.get_filter(position)
        label = names.get(code, name.decode(errors="replace") if isinstance(name, bytes) else str(name))
        if code == _FILTER_DEFLATE and values:
            label += f" level {values[0]}"
        filters.append(label)
    return ", ".join(filters) or "none"


def _size(count: int) -> str:
    return f"{count / 2**20:.1f} MiB" if count >= 2**20 else f"{count / 2**10:.1f} KiB"


def _info(h5file: Target) -> str:
    """A short summary of a file: kind, images, shape, dtype, filters, ratio, meta."""
    with _ReadSource(h5file) as (group, source):
        where = _at(source, group)
        if _layout_of(group, where) == "image":
            images, title = [group], f"{where}: FLImage"
        else:
            names = _series_names(group, where)
            identifier = _read_text_attr(group, "identifier", where) if "identifier" in group.attrs else None
            images = [group[name] for name in names]
            title = f"{where}: FLSeries {identifier!r}, {len(images)} images"
        lines = [title]
        if not images:
            return title
        raws = [image["fluorescence/raw"] for image in images]
        shapes = {(raw.shape, raw.dtype.str) for raw in raws}
        first = raws[0]
        shape = "x".join(map(str, first.shape))
        same = " (all images)" if len(shapes) == 1 else f" (fli_0; {len(shapes)} different shapes or dtypes)"
        backgrounds = sorted(_member(images[0]["fluorescence"], "bg_data") or {})
        lines.append(f"  raw: {shape} {first.dtype}{same}; background: {', '.join(backgrounds) or 'none'}")
        stored = sum(raw.id.get_storage_size() for raw in raws)
        logical = sum(raw.size * raw.dtype.itemsize for raw in raws)
        chunks = "x".join(map(str, first.chunks)) if first.chunks else "contiguous"
        lines.append(
            f"  filters: {_describe_filters(first)}; chunks {chunks}; raw data stored in "
            f"{_size(stored)} of {_size(logical)} (ratio {logical / max(stored, 1):.2f})"
        )
        meta = _read_meta(images[0], _at(source, images[0]))
        label = "meta" if len(images) == 1 and images[0] is group else "meta of fli_0"
        lines.append(
            f"  {label}: " + (", ".join(f"{key}={value!r}" for key, value in sorted(meta.items())) or "none")
        )
        return "\n".join(lines)


_USAGE = """usage: python -m flimage_io demo [PATH]      write a sample series and print what was read back
       python -m flimage_io check FILE...     list every problem; exit status 0 only when all are clean
       python -m flimage_io info FILE...      summarise each file"""


def _main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    command, files = (args[0], args[1:]) if args else ("", [])
    if command == "demo" and len(files) <= 1:
        return _demo(files[0] if files else None)
    if command == "check" and files:
        status = 0
        for name in files:
            problems = _check_file_guarded(name)
            print(f"{name}: {'ok' if not problems else f'{len(problems)} problem(s)'}")
            for problem in problems:
                print(f"  - {problem}")
            status = status or (1 if problems else 0)
        return status
    if command == "info" and files:
        status = 0
        for name in files:
            try:
                print(_info(name))
            except (OSError, FormatError) as exc:
                print(f"{name}: {exc}", file=sys.stderr)
                status = 1
        return status
    print(_USAGE, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(_main())
