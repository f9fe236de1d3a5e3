"""The oldest flimage (0.1.0, Python 3.7, h5py 2.10) reads files that flimage_io writes.

python tests/old_flimage.py write DIR   # with flimage_io (the test environment)
python tests/old_flimage.py read DIR    # with flimage 0.1.0 (run by .ci/run)
"""

import sys
import warnings

import numpy as np

IMAGE_RAW = np.arange(32 * 48, dtype=np.uint16).reshape(32, 48) % 1000 + 100
SERIES_RAW = [np.full((8, 8), n, np.float32) for n in range(12)]


def write(folder: str) -> None:
    import flimage_io as fio

    meta = {"pixel size": 1.4e-7, "time": 2.0, "identifier": "cell 3"}
    background = np.full((32, 48), 100, np.uint16)
    fio.write_image(folder + "/image.h5", {"raw": IMAGE_RAW, "bg_data": background, "meta": meta})
    images = [
        {"raw": raw, "meta": {"identifier": f"f{n}", "time": float(n)}}
        for n, raw in enumerate(SERIES_RAW)
    ]
    series = {"identifier": "run", "images": images}
    fio.write_series(folder + "/series.h5", series, level=9, shuffle=False)


def read(folder: str) -> None:
    warnings.simplefilter("ignore")
    import flimage

    with flimage.FLImage(h5file=folder + "/image.h5", h5mode="r") as fli:
        assert np.array_equal(fli.raw_fl, IMAGE_RAW) and fli.raw_fl.dtype == np.uint16
        assert np.array_equal(fli.fl, IMAGE_RAW.astype(float) - 100)
        assert fli.meta["identifier"] == "cell 3" and fli.meta["time"] == 2.0
    with flimage.FLSeries(h5file=folder + "/series.h5", h5mode="r") as fls:
        assert len(fls) == 12 and fls.identifier == "run"
        for n, raw in enumerate(SERIES_RAW):
            assert np.array_equal(fls.get_flimage(n).raw_fl, raw)
        assert fls.get_flimage("f11").meta["time"] == 11.0
    print("flimage", flimage.__version__, "read both files with the same numbers")


if __name__ == "__main__":
    {"write": write, "read": read}[sys.argv[1]](sys.argv[2])
