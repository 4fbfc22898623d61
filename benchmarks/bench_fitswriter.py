"""Benchmark the per-ObsID light-curve writer: rxte_hpc.fits.writer against fitsio (CFITSIO) and astropy.

One typical per-ObsID file (two bands of ~`--rows` 16-s bins with TIME, RATE,
ERROR, FRACEXP, BACKV, BACKE, LiveTime, plus a GTI extension), each HDU with
CHECKSUM/DATASUM, written to a file in a tmpfs directory by each route, in the
same run. astropy gets the same columns and keywords, fitsio the same columns and
fewer keywords (its best case); the time is per whole file, median of `--repeat` writes after a warm-up. Every file is
checked afterwards (astropy `checksum=True`), so no route wins by skipping work.

    python benchmarks/bench_fitswriter.py [--rows 200] [--repeat 300]
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
from astropy.io import fits

from rxte_hpc.fits.lcfile import LightCurve, lightcurve_bytes, lightcurve_hdulist


def curves(rows: int) -> list[LightCurve]:
    rng = np.random.default_rng(1)
    t = 2.0e8 + 16.0 * np.arange(rows)
    out = []
    for name in ("soft", "hard"):
        rate = rng.normal(20, 2, rows)
        out.append(LightCurve(t, rate, np.full(rows, 0.7), np.ones(rows), 16.0,
                              columns={"BACKV": np.full(rows, 5.0), "BACKE": np.full(rows, 0.1),
                                       "LiveTime": np.full(rows, 48.0)},
                              gti=np.array([[t[0], t[-1] + 16.0]]), name=name,
                              keywords={"CHMIN": (5, "lowest channel"), "CHMAX": (10, "highest channel"),
                                        "OBJECT": "ETA_CAR", "DEADAPP": True, "BACKAPP": True}))
    return out


def with_writer(lcs: list[LightCurve], primary: dict, path: Path) -> None:
    path.write_bytes(lightcurve_bytes(lcs, primary))


def with_astropy(lcs: list[LightCurve], primary: dict, path: Path) -> None:
    lightcurve_hdulist(lcs, primary).writeto(path, overwrite=True, checksum=True)


def with_fitsio_arrays(lcs: list[LightCurve], primary: dict, path: Path) -> None:
    """fitsio given plain arrays and keyword dicts (no astropy objects on the way): its own best case.

    It writes fewer keywords than lcfile does (no DATE-OBS, EXPOSURE, units...), which favours it.
    """
    import fitsio

    with fitsio.FITS(str(path), "rw", clobber=True) as f:
        f.write(None, header=[{"name": k, "value": v} for k, v in primary.items()])
        for lc in lcs:
            data = {"TIME": lc.time, "RATE": lc.rate, "ERROR": lc.error, "FRACEXP": lc.fracexp, **lc.columns}
            header = [{"name": k, "value": v[0] if isinstance(v, tuple) else v,
                       "comment": v[1] if isinstance(v, tuple) else ""} for k, v in lc.keywords.items()]
            header += [{"name": "TIMEDEL", "value": lc.timedel}, {"name": "HDUCLASS", "value": "OGIP"},
                       {"name": "HDUCLAS1", "value": "LIGHTCURVE"}, {"name": "TSTARTI", "value": int(lc.tstart)},
                       {"name": "TSTARTF", "value": lc.tstart % 1}, {"name": "MJDREFI", "value": lc.ref.mjdrefi},
                       {"name": "MJDREFF", "value": lc.ref.mjdreff}, {"name": "TIMESYS", "value": "TT"}]
            f.write(data, extname=lc.name.upper(), header=header)
        gti = lcs[0].gti
        assert gti is not None
        f.write({"START": gti[:, 0], "STOP": gti[:, 1]}, extname="GTI")
        for hdu in f:
            hdu.write_checksum()


def measure(fn: Callable[[list[LightCurve], dict, Path], None], lcs: list[LightCurve], primary: dict,
            path: Path, repeat: int) -> float:
    for _ in range(max(5, repeat // 10)):
        fn(lcs, primary, path)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn(lcs, primary, path)
        times.append(time.perf_counter() - t0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a checksum mismatch is an astropy warning
        with fits.open(path, checksum=True) as hdul:
            assert all("CHECKSUM" in h.header and "DATASUM" in h.header for h in hdul), fn.__name__
            np.testing.assert_array_equal(hdul[1].data["RATE"], lcs[0].rate)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=300)
    args = parser.parse_args()
    lcs = curves(args.rows)
    primary = {"OBS_ID": "90171-01-01-00", "CREATOR": "rxte-hpc bench", "BACKEND": "native", "NBANDS": 2}
    root = Path("/dev/shm") if os.access("/dev/shm", os.W_OK) else None
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        path = Path(tmp) / "lc.fits"
        results = {}
        routes = [("rxte_hpc.fits.writer", with_writer), ("fitsio (arrays + dicts)", with_fitsio_arrays),
                  ("astropy", with_astropy)]
        for label, fn in routes:
            try:
                results[label] = measure(fn, lcs, primary, path, args.repeat)
            except ImportError as exc:
                print(f"{label:28s} not measured ({exc})")
    base = results["rxte_hpc.fits.writer"]
    print(f"per-ObsID light curve, 2 bands x {args.rows} rows + GTI, CHECKSUM/DATASUM on every HDU, "
          f"median of {args.repeat} writes to {root or 'a temporary directory'}:")
    for label, seconds in results.items():
        print(f"  {label:28s} {seconds * 1e3:7.3f} ms  ({seconds / base:5.1f}x the writer)")


if __name__ == "__main__":
    main()
