"""Benchmark: flimage_io beside the reference flimage and bare h5py, same data, one run.

    python bench_flimage_io.py            # the full run (a few minutes, most of it flimage)
    python bench_flimage_io.py --quick    # smaller workloads, under a minute

Absolute times on a shared machine are noise; the ratios, measured in the same
run on the same data, are what to quote. "fast" is flimage_io with the zlib-ng
extra, "stdlib" the same code with the standard library's zlib (what a vendored
copy with only h5py and numpy gets).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
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


def frame(shape: tuple[int, int], seed: int) -> np.ndarray:
    """Poisson photon counts on a smooth blob over a camera offset, like real fluorescence."""
    rows, cols = np.mgrid[0 : shape[0], 0 : shape[1]]
    sigma = shape[0] / 6
    lam = 100 + 2000 * np.exp(-((rows - shape[0] / 2) ** 2 + (cols - shape[1] / 2) ** 2) / (2 * sigma**2))
    return np.random.default_rng(seed).poisson(lam).astype(np.float64)


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


# --- the three writers and readers, on the same layout ------------------------------


def write_flimage(path: str, frames: list[np.ndarray]) -> None:
    with flimage.FLSeries(h5file=path, h5mode="w") as fls:
        for number, raw in enumerate(frames):
            fls.add_flimage(flimage.FLImage(data=raw, meta_data=meta(number)))


def write_h5py(path: str, frames: list[np.ndarray]) -> None:
    """Bare h5py with our filters (shuffle, deflate level 1, fletcher32), one chunk per image."""
    with h5py.File(path, "w") as h5:
        for number, raw in enumerate(frames):
            group = h5.create_group(f"fli_{number}")
            for key, value in meta(number).items():
                group.attrs[key] = value
            group.attrs["flimage version"] = group.attrs["qpimage version"] = "h5py"
            dataset = group.create_dataset(
                "fluorescence/raw",
                data=raw.astype(np.float32),
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
    fio.write_series(path, {"identifier": "bench", "images": images})


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


def verify(path: str, frames: list[np.ndarray]) -> None:
    """Every file must read back exactly, in h5py (checksums verified) and in flimage."""
    for raw, got in zip(frames, read_h5py(path)):
        assert np.array_equal(raw.astype(np.float32), got), path
    with flimage.FLSeries(h5file=path, h5mode="r") as fls:
        assert len(fls) == len(frames)
        assert np.array_equal(fls.get_flimage(len(frames) - 1).raw_fl, frames[-1].astype(np.float32))


# --- workloads ---------------------------------------------------------------------------


class Table:
    def __init__(self) -> None:
        self.rows: list[tuple[str, ...]] = []

    def add(self, *cells: str) -> None:
        self.rows.append(cells)
        print(" | ".join(cells), flush=True)


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.1f} ms"


def series_workloads(table: Table, scratch: str, count: int, repeat: int) -> None:
    frames = [frame((512, 512), seed) for seed in range(count)]
    title = f"series of {count} x 512x512"
    paths = {
        name: os.path.join(scratch, f"series_{name}.h5") for name in ("flimage", "h5py", "stdlib", "fast")
    }
    write_time = {"flimage": best(lambda: write_flimage(paths["flimage"], frames), 1)}
    write_time["h5py"] = best(lambda: write_h5py(paths["h5py"], frames), repeat)
    for name in ("stdlib", "fast"):
        if name == "fast" and zlib_ng is None:
            continue
        with backend(name):
            write_time[name] = best(lambda: write_ours(paths[name], frames), repeat)  # noqa: B023
        verify(paths[name], frames)
    size = {name: os.path.getsize(path) for name, path in paths.items() if name in write_time}
    for name, seconds in write_time.items():
        table.add(
            f"write {title}",
            f"{'flimage_io ' + name if name in ('stdlib', 'fast') else name}",
            f"{ms(seconds / count)} / frame",
            f"{write_time['flimage'] / seconds:.0f}x",
            f"{seconds / write_time['h5py']:.2f}",
            f"{size[name] / 2**20:.1f} MiB ({size[name] / size['flimage']:.2f})",
        )
    path = paths["stdlib"]
    read_time = {
        "flimage": best(lambda: read_flimage(path), 1),
        "h5py": best(lambda: read_h5py(path), repeat),
    }
    for name in ("stdlib", "fast"):
        if name == "fast" and zlib_ng is None:
            continue
        with backend(name):
            read_time[name] = best(lambda: read_ours(path), repeat)
    for name, seconds in read_time.items():
        table.add(
            f"read {title}",
            f"{'flimage_io ' + name if name in ('stdlib', 'fast') else name}",
            f"{ms(seconds / count)} / frame",
            f"{read_time['flimage'] / seconds:.0f}x",
            f"{seconds / read_time['h5py']:.2f}",
            "",
        )


def big_image_workload(table: Table, scratch: str, side: int, repeat: int) -> None:
    raw = frame((side, side), 99)
    title = f"one {side}x{side} image"
    path = {name: os.path.join(scratch, f"big_{name}.h5") for name in ("flimage", "h5py", "stdlib", "fast")}

    def flimage_write() -> None:
        with flimage.FLImage(data=raw, h5file=path["flimage"], h5mode="w"):
            pass

    def h5py_write() -> None:
        write_h5py(path["h5py"], [raw])

    write_time = {"flimage": best(flimage_write, 1), "h5py": best(h5py_write, repeat)}
    read_time = {}
    for name in ("stdlib", "fast"):
        if name == "fast" and zlib_ng is None:
            continue
        with backend(name):
            write_time[name] = best(lambda: fio.write_image(path[name], {"raw": raw}), repeat)  # noqa: B023
            read_time[name] = best(lambda: fio.read_image(path[name]), repeat)  # noqa: B023
    assert np.array_equal(fio.read_image(path["stdlib"])["raw"], raw.astype(np.float32))

    def flimage_read() -> None:
        with flimage.FLImage(h5file=path["flimage"], h5mode="r") as fli:
            _ = fli.raw_fl

    def h5py_read() -> None:
        with h5py.File(path["stdlib"], "r") as h5:
            h5["fluorescence/raw"][()]

    read_time = {"flimage": best(flimage_read, repeat), "h5py": best(h5py_read, repeat), **read_time}
    size = {name: os.path.getsize(p) for name, p in path.items() if name in write_time}
    for name, seconds in write_time.items():
        table.add(
            f"write {title}",
            f"{'flimage_io ' + name if name in ('stdlib', 'fast') else name}",
            ms(seconds),
            f"{write_time['flimage'] / seconds:.0f}x",
            f"{seconds / write_time['h5py']:.2f}",
            f"{size[name] / 2**20:.1f} MiB ({size[name] / size['flimage']:.2f})",
        )
    for name, seconds in read_time.items():
        table.add(
            f"read {title}",
            f"{'flimage_io ' + name if name in ('stdlib', 'fast') else name}",
            ms(seconds),
            f"{read_time['flimage'] / seconds:.0f}x",
            f"{seconds / read_time['h5py']:.2f}",
            "",
        )


def one_frame_workload(table: Table, scratch: str, count: int, repeat: int) -> None:
    base = frame((512, 512), 5).astype(np.float32)
    path = os.path.join(scratch, "long.h5")
    single = os.path.join(scratch, "single.h5")
    fio.write_series(
        path, {"identifier": "long", "images": ({"raw": base + n, "meta": meta(n)} for n in range(count))}
    )
    fio.write_image(single, {"raw": base, "meta": meta(0)})
    middle = count // 2
    reference = best(lambda: fio.read_image(single), repeat)
    title = f"one frame of {count}"
    table.add(title, "flimage_io, one-image file", ms(reference), "", "1.00 (reference)", "")
    for label, index in (("index", middle), ("index -1", -1), ("identifier", f"frame-{middle:04d}")):
        seconds = best(lambda: fio.read_image(path, index=index), repeat)  # noqa: B023
        table.add(title, f"flimage_io by {label}", ms(seconds), "", f"{seconds / reference:.2f}", "")

    def not_found() -> None:
        with contextlib.suppress(fio.ImageNotFoundError):
            fio.read_image(path, index="no such frame")

    seconds = best(not_found, max(1, repeat // 2))
    table.add(
        title,
        "flimage_io by identifier, not found (full scan)",
        ms(seconds),
        "",
        f"{seconds / reference:.2f}",
        "",
    )

    def h5py_one() -> None:
        with h5py.File(path, "r") as h5:
            h5[f"fli_{middle}/fluorescence/raw"][()]

    seconds = best(h5py_one, repeat)
    table.add(title, "h5py by index", ms(seconds), "", f"{seconds / reference:.2f}", "")
    for label, index in (("index", middle), ("identifier", f"frame-{middle:04d}")):

        def flimage_one(index: Any = index) -> None:
            with flimage.FLSeries(h5file=path, h5mode="r") as fls:
                _ = fls.get_flimage(index).raw_fl

        seconds = best(flimage_one, 1)
        table.add(title, f"flimage by {label}", ms(seconds), "", f"{seconds / reference:.2f}", "")

    # appending one frame costs the same whatever the length of the series
    small = os.path.join(scratch, "small.h5")
    fio.write_series(small, {"identifier": "long", "images": [{"raw": base, "meta": meta(0)}]})
    for label, target in (("to a 1-frame series", small), (f"to the {count}-frame series", path)):
        for with_identifier in (False, True):
            stamp = [count * 10]

            def append_one(
                target: str = target, with_identifier: bool = with_identifier, stamp: list[int] = stamp
            ) -> None:
                stamp[0] += 1
                image_meta = meta(stamp[0]) if with_identifier else {"time": 1.0}
                fio.write_series(
                    target, {"identifier": None, "images": [{"raw": base, "meta": image_meta}]}, append=True
                )

            seconds = best(append_one, repeat)
            which = "with identifier" if with_identifier else "no identifier"
            table.add(f"append 1 frame {label}", f"flimage_io ({which})", ms(seconds), "", "", "")


def _memory_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def streaming_child(count: int, side: int) -> None:
    """Runs in a fresh process: peak memory added by a streaming write (Linux)."""
    base = np.random.default_rng(0).poisson(500.0, (side, side)).astype(np.float64)
    frames = ({"raw": base + n, "meta": {"time": n * 1.0}} for n in range(count))
    with tempfile.TemporaryDirectory() as scratch:
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")  # reset the peak (VmHWM) to the current resident size
        baseline = _memory_kib("VmRSS")
        start = time.perf_counter()
        fio.write_series(os.path.join(scratch, "stream.h5"), {"identifier": None, "images": frames})
        seconds = time.perf_counter() - start
        peak = _memory_kib("VmHWM")
    print(f"{(peak - baseline) / 1024:.0f} {seconds:.3f}")


def streaming_workload(table: Table, count: int, side: int) -> None:
    output = subprocess.run(
        [sys.executable, __file__, "--streaming-child", str(count), str(side)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    added, seconds = float(output[0]), float(output[1])
    total = count * side * side * 8 / 2**20
    table.add(
        f"stream-write {count} x {side}x{side} float64 ({total:.0f} MiB) from a generator",
        "flimage_io (default backend)",
        f"{ms(seconds / count)} / frame",
        "",
        "",
        f"peak memory added: {added:.0f} MiB",
    )


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as info:
        for line in info:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    cores = len(os.sched_getaffinity(0))
    return (
        f"{datetime.date.today()}, {cpu}, {cores} cores, Python {platform.python_version()}, "
        f"numpy {np.__version__}, h5py {h5py.__version__} (HDF5 {h5py.version.hdf5_version}), "
        f"flimage {flimage.__version__}, zlib-ng {'installed' if zlib_ng else 'absent'}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="smaller workloads, under a minute")
    parser.add_argument("--streaming-child", nargs=2, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.streaming_child:
        streaming_child(*args.streaming_child)
        return
    quick = args.quick
    print(f"machine: {machine()}{' (--quick)' if quick else ''}\n")
    table = Table()
    table.add(
        "workload",
        "implementation",
        "time",
        "speed-up vs flimage",
        "time / bare h5py",
        "file size (vs flimage)",
    )
    table.add(*["---"] * 6)
    scratch = tempfile.mkdtemp(prefix="bench_flimage_io_")
    try:
        series_workloads(table, scratch, 8 if quick else 48, 2 if quick else 3)
        big_image_workload(table, scratch, 1024 if quick else 4096, 1 if quick else 2)
        one_frame_workload(table, scratch, 200 if quick else 1000, 5 if quick else 10)
        streaming_workload(table, 20 if quick else 150, 1024)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
