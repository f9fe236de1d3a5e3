"""Benchmark: flimage_io beside the reference flimage, bare h5py and tifffile, same data, one run.

    python bench_flimage_io.py            # the full run (several minutes, most of it flimage)
    python bench_flimage_io.py --quick    # smaller workloads, about a minute
    python bench_flimage_io.py --profile  # only: where a frame's write and read time goes

Absolute times on a shared machine are noise; the ratios, measured in the same
run on the same data, are what to quote. "fast" is flimage_io with the zlib-ng
extra, "stdlib" the same code with the standard library's zlib (what a vendored
copy with only h5py and numpy gets). Every contender gets the same float32
frames and stores float32, as flimage does. The tifffile rows (a multi-page
TIFF with a floating-point predictor, what a user might pick instead of HDF5)
need the bench extra: pip install ".[bench]".
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import inspect
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
import zlib
from collections.abc import Callable, Iterator
from typing import Any

import h5py
import numpy as np

import flimage_io as fio

with warnings.catch_warnings():  # flimage's dependencies warn about missing GPU backends
    warnings.simplefilter("ignore")
    import flimage

try:
    from zlib_ng import zlib_ng
except ImportError:  # the fast extra is not installed: its rows are skipped
    zlib_ng = None

try:  # the bench extra: tifffile needs imagecodecs for zstd and the floating-point predictor
    import imagecodecs
    import tifffile
except ImportError:
    imagecodecs = tifffile = None

# the threads flimage_io uses by default (the CPUs available); tifffile gets the same
try:
    WORKERS = max(1, len(os.sched_getaffinity(0)))
except AttributeError:  # not on Linux
    WORKERS = max(1, os.cpu_count() or 1)

# name -> (tifffile codec, level); each with the floating-point predictor (3)
TIFF_CODECS = {"tiff zlib": ("zlib", 1), "tiff zstd": ("zstd", 1)}
OURS = ("stdlib", "fast")


def frame(shape: tuple[int, int], seed: int, dtype: Any = np.float32) -> np.ndarray:
    """Poisson photon counts on a smooth blob over a camera offset, like real fluorescence."""
    rows, cols = np.mgrid[0 : shape[0], 0 : shape[1]]
    sigma = shape[0] / 6
    lam = 100 + 2000 * np.exp(
        -((rows - shape[0] / 2) ** 2 + (cols - shape[1] / 2) ** 2) / (2 * sigma**2)
    )
    return np.random.default_rng(seed).poisson(lam).astype(dtype)


def meta(number: int) -> dict[str, Any]:
    return {"pixel size": 1.4e-7, "time": 0.01 * number, "identifier": f"frame-{number:04d}"}


@contextlib.contextmanager
def backend(name: str) -> Iterator[None]:
    saved = fio._zlib_ng
    fio._zlib_ng = zlib_ng if name == "fast" else None
    try:
        yield
    finally:
        fio._zlib_ng = saved


def best(function: Callable[[], Any], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


def backends() -> list[str]:
    return [name for name in OURS if name != "fast" or zlib_ng is not None]


def label(name: str) -> str:
    if name in OURS:
        return f"flimage_io {name}"
    if name in TIFF_CODECS:
        codec, level = TIFF_CODECS[name]
        return f"tifffile {codec} {level} + float predictor"
    return name


# --- the writers and readers, on the same layout (and tifffile's) --------------------------


def write_flimage(path: str, frames: list[np.ndarray]) -> None:
    with flimage.FLSeries(h5file=path, h5mode="w") as fls:
        for number, raw in enumerate(frames):
            fls.add_flimage(flimage.FLImage(data=raw, meta_data=meta(number)))


def write_h5py(path: str, frames: list[np.ndarray]) -> None:
    """Bare h5py with our filters (shuffle, deflate level 1, fletcher32), one chunk per image."""
    with h5py.File(path, "w") as h5:
        for number, raw in enumerate(frames):
            # float32, as flimage and ours store
            write_h5py_image(h5, number, raw.astype(np.float32, copy=False), meta(number))


def write_h5py_image(h5: Any, number: int, raw: np.ndarray, image_meta: dict[str, Any]) -> None:
    """One image of the layout, the way a user of bare h5py would write it."""
    group = h5.create_group(f"fli_{number}")
    for key, value in image_meta.items():
        group.attrs[key] = value
    group.attrs["flimage version"] = group.attrs["qpimage version"] = "h5py"
    dataset = group.create_dataset(
        "fluorescence/raw",
        data=raw,
        chunks=raw.shape,
        compression="gzip",
        compression_opts=1,
        shuffle=True,
        fletcher32=True,
    )
    for key, value in (
        ("CLASS", "IMAGE"),
        ("IMAGE_VERSION", "1.2"),
        ("IMAGE_SUBCLASS", "IMAGE_GRAYSCALE"),
    ):
        dataset.attrs.create(key, np.bytes_(value))
    group.create_group("fluorescence/bg_data")


def write_ours(path: str, frames: list[np.ndarray]) -> None:
    images = ({"raw": raw, "meta": meta(number)} for number, raw in enumerate(frames))
    fio.write_series(path, {"identifier": "bench", "images": images}, dtype="float32")


def tiff_options(name: str) -> dict[str, Any]:
    codec, level = TIFF_CODECS[name]
    options: dict[str, Any] = {"predictor": 3, "maxworkers": WORKERS}  # 3: floating-point predictor
    if "compressionargs" in inspect.signature(tifffile.TiffWriter.write).parameters:
        options.update(compression=codec, compressionargs={"level": level})
    else:  # tifffile before 2022.7
        options["compression"] = (codec, level)
    return options


def write_tiff(path: str, frames: list[np.ndarray], name: str) -> None:
    """One multi-page TIFF; the pages' strips are compressed on WORKERS threads."""
    pages = (raw.astype(np.float32, copy=False) for raw in frames)
    shape = (len(frames), *frames[0].shape)
    tifffile.imwrite(path, pages, shape=shape, dtype=np.float32, **tiff_options(name))


def read_flimage(path: str) -> list[np.ndarray]:
    with flimage.FLSeries(h5file=path, h5mode="r") as fls:
        return [fli.raw_fl for fli in fls]


def read_h5py(path: str) -> list[np.ndarray]:
    with h5py.File(path, "r") as h5:
        names = sorted((name for name in h5 if name.startswith("fli_")), key=lambda n: int(n[4:]))
        out = []
        for name in names:
            dict(h5[name].attrs)
            out.append(h5[f"{name}/fluorescence/raw"][()])
        return out


def read_ours(path: str) -> list[np.ndarray]:
    return [image["raw"] for image in fio.read_series(path)["images"]]


def read_tiff(path: str) -> np.ndarray:
    return tifffile.imread(path, maxworkers=WORKERS)


def verify(path: str, frames: list[np.ndarray]) -> None:
    """Every file must read back exactly, in h5py (checksums verified) and in flimage."""
    for raw, got in zip(frames, read_h5py(path)):
        assert got.dtype == np.float32 and np.array_equal(raw.astype(np.float32), got), path
    with flimage.FLSeries(h5file=path, h5mode="r") as fls:
        assert len(fls) == len(frames)
        assert np.array_equal(fls.get_flimage(len(frames) - 1).raw_fl, frames[-1].astype(np.float32))


# --- workloads ---------------------------------------------------------------------------


class Table:
    columns = (
        "workload",
        "implementation",
        "time",
        "speed-up vs flimage",
        "time / bare h5py",
        "time / flimage_io",
        "file size (vs flimage), compression",
    )

    def __init__(self) -> None:
        self.rows: list[tuple[str, ...]] = []

    def add(self, *cells: str) -> None:
        cells = (*cells, *[""] * (len(self.columns) - len(cells)))
        self.rows.append(cells)
        print(" | ".join(cells), flush=True)

    def skipped(self, workload: str, reason: Any) -> None:
        self.add(workload, "flimage_io", f"skipped: {reason}")


def speedup(ratio: float) -> str:
    return f"{ratio:.0f}x" if ratio >= 10 else f"{ratio:.1f}x"


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.1f} ms"


def mib(size: float) -> str:
    return f"{size / 2**20:.1f} MiB"


def add_rows(
    table: Table,
    workload: str,
    times: dict[str, float],
    frames: int | None,
    sizes: dict[str, int] | None = None,
    raw_bytes: int = 0,
) -> None:
    """One row per contender: ratios vs flimage, bare h5py and flimage_io (fast when installed)."""
    ours = times.get("fast", times["stdlib"])
    for name, seconds in times.items():
        size = ""
        if sizes is not None:
            vs_flimage = sizes[name] / sizes["flimage"]
            size = f"{mib(sizes[name])} ({vs_flimage:.2f}), {raw_bytes / sizes[name]:.2f}:1"
        table.add(
            workload,
            label(name),
            ms(seconds) if frames is None else f"{ms(seconds / frames)} / frame",
            speedup(times["flimage"] / seconds),
            f"{seconds / times['h5py']:.2f}",
            f"{seconds / ours:.2f}",
            size,
        )


def tiff_names() -> list[str]:
    return list(TIFF_CODECS) if tifffile is not None else []


def series_workloads(table: Table, scratch: str, count: int, repeat: int) -> None:
    frames = [frame((512, 512), seed) for seed in range(count)]
    title = f"series of {count} x 512x512"
    names = ["flimage", "h5py", *backends(), *tiff_names()]
    paths = {name: os.path.join(scratch, f"series_{name.replace(' ', '_')}.h5") for name in names}
    write_time = {"flimage": best(lambda: write_flimage(paths["flimage"], frames), 1)}
    write_time["h5py"] = best(lambda: write_h5py(paths["h5py"], frames), repeat)
    for name in backends():
        with backend(name):
            write_time[name] = best(lambda: write_ours(paths[name], frames), repeat)  # noqa: B023
        verify(paths[name], frames)
    for name in tiff_names():
        write_time[name] = best(lambda: write_tiff(paths[name], frames, name), repeat)  # noqa: B023
        assert np.array_equal(read_tiff(paths[name]), np.stack(frames)), name
    size = {name: os.path.getsize(paths[name]) for name in write_time}
    raw_bytes = count * 512 * 512 * 4
    add_rows(table, f"write {title}", write_time, count, size, raw_bytes)
    path = paths["stdlib"]
    read_time = {
        "flimage": best(lambda: read_flimage(path), 1),
        "h5py": best(lambda: read_h5py(path), repeat),
    }
    for name in backends():
        with backend(name):
            read_time[name] = best(lambda: read_ours(path), repeat)
    for name in tiff_names():
        read_time[name] = best(lambda: read_tiff(paths[name]), repeat)  # noqa: B023
    add_rows(table, f"read {title}", read_time, count)


def big_image_workload(table: Table, scratch: str, side: int, repeat: int) -> None:
    raw = frame((side, side), 99)
    title = f"one {side}x{side} image"
    names = ["flimage", "h5py", *backends(), *tiff_names()]
    path = {name: os.path.join(scratch, f"big_{name.replace(' ', '_')}.h5") for name in names}

    def flimage_write() -> None:
        with flimage.FLImage(data=raw, h5file=path["flimage"], h5mode="w"):
            pass

    def h5py_write() -> None:
        write_h5py(path["h5py"], [raw])

    write_time = {"flimage": best(flimage_write, 1), "h5py": best(h5py_write, repeat)}
    read_time = {}
    for name in backends():
        with backend(name):
            write_time[name] = best(
                lambda: fio.write_image(path[name], {"raw": raw}, dtype="float32"),  # noqa: B023
                repeat,
            )
            read_time[name] = best(lambda: fio.read_image(path[name]), repeat)  # noqa: B023
    stored = fio.read_image(path["stdlib"])["raw"]
    assert stored.dtype == np.float32 and np.array_equal(stored, raw)
    for name in tiff_names():
        options = tiff_options(name)
        write_time[name] = best(lambda: tifffile.imwrite(path[name], raw, **options), repeat)  # noqa: B023
        read_time[name] = best(lambda: read_tiff(path[name]), repeat)  # noqa: B023
        assert np.array_equal(read_tiff(path[name]), raw), name

    def flimage_read() -> None:
        with flimage.FLImage(h5file=path["flimage"], h5mode="r") as fli:
            _ = fli.raw_fl

    def h5py_read() -> None:
        with h5py.File(path["stdlib"], "r") as h5:
            h5["fluorescence/raw"][()]

    read_time = {"flimage": best(flimage_read, repeat), "h5py": best(h5py_read, repeat), **read_time}
    size = {name: os.path.getsize(p) for name, p in path.items() if name in write_time}
    add_rows(table, f"write {title}", write_time, None, size, raw.size * 4)
    add_rows(table, f"read {title}", read_time, None)


def one_frame_workload(table: Table, scratch: str, count: int, repeat: int) -> str:
    """One frame out of a long series; returns the series' path (count x 512x512 float32)."""
    base = frame((512, 512), 5)
    path = os.path.join(scratch, "long.h5")
    single = os.path.join(scratch, "single.h5")
    fio.write_series(
        path,
        {"identifier": "long", "images": ({"raw": base + n, "meta": meta(n)} for n in range(count))},
        dtype="float32",
    )
    fio.write_image(single, {"raw": base, "meta": meta(0)}, dtype="float32")
    middle = count // 2
    reference = best(lambda: fio.read_image(single), repeat)
    title = f"one frame of {count}"
    table.add(title, "flimage_io, one-image file", ms(reference), "", "", "1.00 (reference)")
    for what, index in (("index", middle), ("index -1", -1), ("identifier", f"frame-{middle:04d}")):
        seconds = best(lambda: fio.read_image(path, index=index), repeat)  # noqa: B023
        table.add(title, f"flimage_io by {what}", ms(seconds), "", "", f"{seconds / reference:.2f}")

    def not_found() -> None:
        with contextlib.suppress(fio.ImageNotFoundError):
            fio.read_image(path, index="no such frame")

    seconds = best(not_found, max(1, repeat // 2))
    table.add(
        title,
        "flimage_io by identifier, not found (full scan)",
        ms(seconds),
        "",
        "",
        f"{seconds / reference:.2f}",
    )

    def h5py_one() -> None:
        with h5py.File(path, "r") as h5:
            h5[f"fli_{middle}/fluorescence/raw"][()]

    seconds = best(h5py_one, repeat)
    table.add(title, "h5py by index", ms(seconds), "", "", f"{seconds / reference:.2f}")
    for what, index in (("index", middle), ("identifier", f"frame-{middle:04d}")):

        def flimage_one(index: Any = index) -> None:
            with flimage.FLSeries(h5file=path, h5mode="r") as fls:
                _ = fls.get_flimage(index).raw_fl

        seconds = best(flimage_one, 1)
        table.add(title, f"flimage by {what}", ms(seconds), "", "", f"{seconds / reference:.2f}")

    # appending one frame costs the same whatever the length of the series
    small = os.path.join(scratch, "small.h5")
    fio.write_series(
        small, {"identifier": "long", "images": [{"raw": base, "meta": meta(0)}]}, dtype="float32"
    )
    for where, target in (("to a 1-frame series", small), (f"to the {count}-frame series", path)):
        for with_identifier in (False, True):
            stamp = [count * 10]

            def append_one(
                target: str = target, with_identifier: bool = with_identifier, stamp: list[int] = stamp
            ) -> None:
                stamp[0] += 1
                image_meta = meta(stamp[0]) if with_identifier else {"time": 1.0}
                fio.write_series(
                    target,
                    {"identifier": None, "images": [{"raw": base, "meta": image_meta}]},
                    dtype="float32",
                    append=True,
                )

            seconds = best(append_one, repeat)
            which = "with identifier" if with_identifier else "no identifier"
            table.add(f"append 1 frame {where}", f"flimage_io ({which})", ms(seconds))
    return path


# --- the lazy series API: read_series(path, index, lazy=True) -----------------------------


def selection_workload(table: Table, path: str, count: int, repeat: int) -> None:
    """10 frames out of the count-frame series of one_frame_workload (appends come after them)."""
    start = count // 2
    title = f"read 10 of {count} x 512x512"
    wanted = [f"frame-{n:04d}" for n in range(start, start + 10)]
    selections = {f"slice({start}, {start + 10})": slice(start, start + 10), "10 identifiers": wanted}
    for what, index in selections.items():  # first, so a library without index= prints no row
        got = fio.read_series(path, index)["images"]
        assert [image["meta"]["identifier"] for image in got] == wanted, what
    whole = best(lambda: fio.read_series(path), max(1, repeat // 5))
    table.add(title, f"flimage_io, read_series of all {count}", ms(whole), "", "", "1.00 (reference)")
    for what, index in selections.items():
        seconds = best(lambda: fio.read_series(path, index), repeat)  # noqa: B023
        table.add(title, f"flimage_io by {what}", ms(seconds), "", "", f"{seconds / whole:.2f}")

    def h5py_ten() -> None:
        with h5py.File(path, "r") as h5:
            for n in range(start, start + 10):
                dict(h5[f"fli_{n}"].attrs)
                h5[f"fli_{n}/fluorescence/raw"][()]

    seconds = best(h5py_ten, repeat)
    table.add(title, "h5py by index", ms(seconds), "", "", f"{seconds / whole:.2f}")


def meta_scan_workload(table: Table, scratch: str, count: int) -> None:
    """Count the images of a long series and read every frame's time, without the pixels."""
    path = os.path.join(scratch, "times.h5")
    tiny = np.ones((8, 8), np.float32)
    images = ({"raw": tiny, "meta": meta(n)} for n in range(count))
    fio.write_series(path, {"identifier": "times", "images": images}, dtype="float32")
    expected = [0.01 * n for n in range(count)]

    def ours() -> list[float]:
        series = fio.read_series(path, lazy=True)
        assert len(series["images"]) == count
        return [image["meta"]["time"] for image in series["images"]]

    def reference() -> list[float]:
        with flimage.FLSeries(h5file=path, h5mode="r") as fls:
            assert len(fls) == count
            return [fls[n]["time"] for n in range(len(fls))]

    def bare() -> list[float]:
        with h5py.File(path, "r") as h5:
            assert sum(name.startswith("fli_") for name in h5) == count
            return [float(h5[f"fli_{n}"].attrs["time"]) for n in range(count)]

    for function in (ours, reference, bare):
        assert np.allclose(function(), expected), function.__name__
    times = {"flimage": best(reference, 1), "h5py": best(bare, 2), "stdlib": best(ours, 2)}
    for name, seconds in times.items():
        table.add(
            f"len + every frame's time of {count} x 8x8",
            "flimage_io, lazy=True" if name == "stdlib" else name,
            ms(seconds),
            speedup(times["flimage"] / seconds),
            f"{seconds / times['h5py']:.2f}",
            f"{seconds / times['stdlib']:.2f}",
        )


def _memory_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def _reset_peak() -> int:
    """Reset the peak (VmHWM) to the current resident size (Linux); return that size in KiB."""
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")
    return _memory_kib("VmRSS")


def streaming_child(count: int, side: int) -> None:
    """Runs in a fresh process: peak memory added by a streaming write (Linux)."""
    base = np.random.default_rng(0).poisson(500.0, (side, side)).astype(np.float64)
    frames = ({"raw": base + n, "meta": {"time": n * 1.0}} for n in range(count))
    with tempfile.TemporaryDirectory() as scratch:
        baseline = _reset_peak()
        start = time.perf_counter()
        fio.write_series(os.path.join(scratch, "stream.h5"), {"identifier": None, "images": frames})
        seconds = time.perf_counter() - start
        peak = _memory_kib("VmHWM")
    print(f"{(peak - baseline) / 1024:.0f} {seconds:.3f}")


def lazy_child(mode: str, source: str, target: str) -> None:
    """Runs in a fresh process: time and peak memory added by iterating or copying a series."""
    baseline = _reset_peak()
    start = time.perf_counter()
    try:
        if mode in ("lazy", "eager"):
            for image in fio.read_series(source, lazy=mode == "lazy")["images"]:
                float(image["raw"][0, 0])
        elif mode in ("copy-lazy", "copy-eager"):
            fio.write_series(target, fio.read_series(source, lazy=mode == "copy-lazy"))
        else:
            raise ValueError(f"unknown mode {mode!r}")
    except TypeError as exc:  # the lazy API is not there yet
        print(f"skipped: {exc}")
        return
    seconds = time.perf_counter() - start
    peak = _memory_kib("VmHWM")
    print(f"{(peak - baseline) / 1024:.0f} {seconds:.3f}")


def child(*args: str) -> list[str]:
    """Run this script in a fresh process; its one line of output, split."""
    done = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{' '.join(args)} failed:\n{done.stderr}")
    return done.stdout.split()


def streaming_workload(table: Table, count: int, side: int) -> None:
    output = child("--streaming-child", str(count), str(side))
    added, seconds = float(output[0]), float(output[1])
    total = count * side * side * 8 / 2**20
    table.add(
        f"stream-write {count} x {side}x{side} float64 ({total:.0f} MiB) from a generator",
        "flimage_io (default backend)",
        f"{ms(seconds / count)} / frame",
        *[""] * 3,
        f"peak memory added: {added:.0f} MiB",
    )


def lazy_workload(table: Table, scratch: str, count: int, side: int) -> None:
    """Iterate and copy a series too big to want in memory, each in a fresh process."""
    source = os.path.join(scratch, "lazy_source.h5")
    base = frame((side, side), 7, np.float64)
    images = ({"raw": base + n, "meta": meta(n)} for n in range(count))
    fio.write_series(source, {"identifier": "lazy", "images": images}, dtype="float64")
    total = count * side * side * 8 / 2**20
    series = f"{count} x {side}x{side} float64 ({total:.0f} MiB, {mib(os.path.getsize(source))} stored)"
    results = {}
    for mode in ("lazy", "eager", "copy-lazy", "copy-eager"):  # lazy first: skip before the rest
        target = os.path.join(scratch, f"lazy_{mode}.h5")
        output = child("--lazy-child", mode, source, target)
        with contextlib.suppress(FileNotFoundError):
            os.remove(target)
        if output[0] == "skipped:":
            raise TypeError(" ".join(output[1:]))
        results[mode] = (float(output[0]), float(output[1]))
    for verb, modes in (("iterate", ("eager", "lazy")), ("copy", ("copy-eager", "copy-lazy"))):
        reference = results[modes[0]][1]
        for mode in modes:
            added, seconds = results[mode]
            how = "lazy=True" if mode.endswith("lazy") else "lazy=False"
            table.add(
                f"{verb} {series}" + (", touching every raw" if verb == "iterate" else ""),
                f"flimage_io read_series({how})" + (" into write_series" if verb == "copy" else ""),
                f"{ms(seconds / count)} / frame",
                "",
                "",
                f"{seconds / reference:.2f}" + (" (reference)" if mode == modes[0] else ""),
                f"peak memory added: {added:.0f} MiB",
            )


# --- a live acquisition: one streaming call with commits, one-frame appends, a viewer ---------


def tiny_frames(count: int, stamps: list[float] | None = None) -> Iterator[dict[str, Any]]:
    """64x64 uint16 camera frames with an identifier each; ``stamps`` gets the time each is taken."""
    base = np.random.default_rng(0).poisson(100, (64, 64)).astype(np.uint16)
    for n in range(count):
        if stamps is not None:
            stamps.append(time.perf_counter())
        yield {"raw": base + np.uint16(n % 1000), "meta": {"identifier": f"frame {n}", "time": n * 0.01}}


def write_h5py_tiny(path: str, count: int) -> None:
    """Bare h5py writing the same layout for the tiny frames."""
    with h5py.File(path, "w") as h5:
        for number, image in enumerate(tiny_frames(count)):
            write_h5py_image(h5, number, image["raw"], image["meta"])


VIEWER = """
import os, sys, time
import flimage_io as fio
path = sys.argv[1]
longest, reads = 0.0, 0
while not os.path.exists(path + ".stop"):
    started = time.perf_counter()
    try:
        fio.read_image(path, index=-1)
        reads += 1
    except FileNotFoundError:
        pass
    longest = max(longest, time.perf_counter() - started)
    time.sleep(0.01)
print(longest, reads)
"""


def acquisition_workload(table: Table, scratch: str, count: int) -> None:
    """A camera of 64x64 frames streamed into one call (commit_every=1 s) while a viewer in another
    process reads the newest frame; then one-frame appends to series of several lengths."""
    path = os.path.join(scratch, "live.h5")
    environment = {**os.environ, "PYTHONPATH": os.path.dirname(os.path.abspath(fio.__file__))}
    viewer = subprocess.Popen(
        [sys.executable, "-c", VIEWER, path], env=environment, stdout=subprocess.PIPE, text=True
    )
    stamps: list[float] = []
    series = {"identifier": "live", "images": tiny_frames(count, stamps)}
    started = time.perf_counter()
    fio.write_series(path, series, append=True, commit_every=1.0)
    seconds = time.perf_counter() - started
    open(path + ".stop", "w").close()
    longest, reads = viewer.communicate(timeout=60)[0].split()
    title = f"live acquisition: {count} x 64x64 uint16 in one call, commit_every=1 s"
    # windows of 10,000 frames span about ten commits: one commit that waits for the viewer does not
    # decide them, as it decides a window of 1,000
    window = min(10_000, count // 2)
    first = (stamps[window] - stamps[0]) / window
    last = (stamps[-1] - stamps[-1 - window]) / window
    bare = best(lambda: write_h5py_tiny(os.path.join(scratch, "bare.h5"), 10_000), 1) / 10_000
    table.add(title, "bare h5py, same layout, 10000 frames", f"{ms(bare)} / frame", "", "1.00")
    for part, per_frame in (("first", first), ("last", last)):
        cost = f"{ms(per_frame)} / frame"
        table.add(title, f"flimage_io, {part} {window} frames", cost, "", f"{per_frame / bare:.2f}")
    table.add(
        title,
        "flimage_io, whole call",
        f"{ms(seconds / count)} / frame",
        "",
        f"{seconds / count / bare:.2f}",
    )
    table.add(
        title,
        f"viewer in another process ({reads} reads of index -1)",
        f"longest read {ms(float(longest))}",
    )
    for length in (10, 1000, 10_000):
        target = os.path.join(scratch, f"append{length}.h5")
        fio.write_series(target, {"identifier": "live", "images": tiny_frames(length)}, append=True)
        numbers = iter(range(length, length + 100))

        def append_one(target: str = target, numbers: Iterator[int] = numbers) -> None:
            n = next(numbers)
            image = {"raw": np.zeros((64, 64), np.uint16), "meta": {"identifier": f"frame {n}"}}
            fio.write_series(target, {"identifier": None, "images": [image]}, append=True)

        table.add(
            "append 1 frame (64x64, with identifier), one call",
            f"flimage_io, to a {length}-frame series",
            ms(best(append_one, 5)),
        )


def optional(table: Table, workload: str, function: Callable[..., Any], *args: Any) -> None:
    """The lazy series API is new: with a flimage_io that lacks it, say so and go on."""
    try:
        function(table, *args)
    except TypeError as exc:
        table.skipped(workload, exc)


# --- --profile: where a frame's time goes ---------------------------------------------------


def profile(scratch: str, count: int, repeat: int) -> None:
    """Time the codec pieces of one frame separately and compare with a whole write and read."""
    frames = [frame((512, 512), seed) for seed in range(count)]
    path = os.path.join(scratch, "profile.h5")
    name = "fast" if zlib_ng is not None else "stdlib"
    with backend(name):
        write = best(lambda: write_ours(path, frames), repeat) / count
        read = best(lambda: read_ours(path), repeat) / count
    codec = zlib_ng if name == "fast" else zlib
    if inspect.signature(fio.write_series).parameters["level"].default is None:
        level, strategy, how = 1, codec.Z_RLE, "level 1 RLE, the default"
    else:
        level, strategy, how = 1, codec.Z_DEFAULT_STRATEGY, "level 1"
    fletcher32 = getattr(fio, "_fletcher32", None)

    def shuffle(raw: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(raw.reshape(-1).view(np.uint8).reshape(-1, 4).T).reshape(-1)

    def deflate(data: Any) -> bytes:
        encoder = codec.compressobj(level, codec.DEFLATED, 15, 8, strategy)
        return encoder.compress(data) + encoder.flush()

    def unshuffle(data: bytes, out: np.ndarray) -> None:
        planes = np.frombuffer(data, np.uint8).reshape(4, *out.shape)
        target = out.view(np.uint8)
        for byte in range(4):
            target[:, byte::4] = planes[byte]

    shuffled = [shuffle(raw) for raw in frames]
    stored = [deflate(data) for data in shuffled]
    inflated = [codec.decompress(data) for data in stored]
    out = np.empty((512, 512), np.float32)
    unshuffle(inflated[0], out)
    assert np.array_equal(out, frames[0])

    def per_frame(function: Callable[[Any], Any], items: list[Any]) -> float:
        return best(lambda: [function(item) for item in items], repeat) / count

    pieces = {
        "write": [
            ("shuffle", per_frame(shuffle, frames)),
            (f"deflate ({how})", per_frame(deflate, shuffled)),
        ],
        "read": [
            ("inflate", per_frame(codec.decompress, stored)),
            ("unshuffle", per_frame(lambda data: unshuffle(data, out), inflated)),
        ],
    }
    if fletcher32 is not None:
        checksum = per_frame(fletcher32, stored)
        pieces["write"].append(("fletcher32 (fio._fletcher32)", checksum))
        pieces["read"].insert(0, ("fletcher32 (fio._fletcher32)", checksum))
    else:
        for parts in pieces.values():
            parts.append(("fletcher32 (no fio._fletcher32: not timed)", 0.0))
    ratio = count * 512 * 512 * 4 / sum(len(data) for data in stored)
    print(
        f"profile: {count} x 512x512 float32 ({ratio:.2f}:1), flimage_io {name}, {WORKERS} workers.\n"
        "An estimate: each piece is timed on its own in this thread, over every frame, best of "
        f"{repeat};\nthe rest (HDF5 calls in the calling thread + waiting) = total - the pieces, "
        "negative when the workers overlap.\n"
    )

    def ms2(seconds: float) -> str:
        return f"{seconds * 1e3:.2f} ms"

    for verb, total in (("write", write), ("read", read)):
        work = sum(seconds for _, seconds in pieces[verb])
        print(f"{verb}: total {ms2(total)} / frame")
        for piece, seconds in pieces[verb]:
            print(f"  {piece:<46} {ms2(seconds):>10}  {seconds / total:5.0%}")
        print(
            f"  {'rest (HDF5 calls, waiting)':<46} {ms2(total - work):>10}"
            f"  {(total - work) / total:5.0%}"
        )
        print(
            f"  the floor: codec time / workers = {ms2(work)} / {WORKERS} = {ms2(work / WORKERS)}"
            f" ({total / (work / WORKERS):.1f}x that)\n"
        )


# --- the run -------------------------------------------------------------------------------


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as info:
        for line in info:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    tiff = (
        f"tifffile {tifffile.__version__}, imagecodecs {imagecodecs.__version__}"
        if tifffile is not None
        else "tifffile absent"
    )
    return (
        f"{datetime.date.today()}, {cpu}, {WORKERS} cores, Python {platform.python_version()}, "
        f"numpy {np.__version__}, h5py {h5py.__version__} (HDF5 {h5py.version.hdf5_version}), "
        f"flimage {flimage.__version__}, zlib-ng {'installed' if zlib_ng else 'absent'}, {tiff}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="smaller workloads, about a minute")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="only split a series frame's write and read time into pieces",
    )
    parser.add_argument("--streaming-child", nargs=2, type=int, help=argparse.SUPPRESS)
    parser.add_argument("--lazy-child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.streaming_child:
        streaming_child(*args.streaming_child)
        return
    if args.lazy_child:
        lazy_child(*args.lazy_child)
        return
    quick = args.quick
    print(f"machine: {machine()}{' (--quick)' if quick else ''}\n")
    scratch = tempfile.mkdtemp(prefix="bench_flimage_io_")
    try:
        if args.profile:
            profile(scratch, 8 if quick else 48, 2 if quick else 3)
            return
        if tifffile is None:
            print(
                'tifffile or imagecodecs not installed: tifffile rows skipped (pip install ".[bench]")\n'
            )
        table = Table()
        table.add(*Table.columns)
        table.add(*["---"] * len(Table.columns))
        series_workloads(table, scratch, 8 if quick else 48, 2 if quick else 3)
        big_image_workload(table, scratch, 1024 if quick else 4096, 1 if quick else 2)
        count, repeat = (200, 5) if quick else (1000, 10)
        path = one_frame_workload(table, scratch, count, repeat)
        optional(table, f"read 10 of {count}", selection_workload, path, count, repeat)
        scan = 1000 if quick else 10_000
        optional(table, f"every frame's time of {scan}", meta_scan_workload, scratch, scan)
        streaming_workload(table, 20 if quick else 150, 1024)
        frames = 15 if quick else 150
        optional(table, f"iterate / copy {frames} x 1024x1024", lazy_workload, scratch, frames, 1024)
        live = 5000 if quick else 100_000
        optional(table, f"live acquisition of {live}", acquisition_workload, scratch, live)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
