"""Converting streams the scan: no step holds all patterns in memory at once."""

from __future__ import annotations

import os
import tracemalloc

import h5py
import mrcfile
import numpy as np
import pytest

from stem2eds import open_bundle
from stem2eds.convert import convert, copy_patterns
from stem2eds.io import DiffractionSource, open_diffraction
from stem2eds.io import source as source_module

SHAPE = (48, 40, 48, 48)  # 8.8 MB of uint16: big enough to see, small enough for CI


def _write_npy(path) -> np.ndarray:
    data = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint16, shape=SHAPE)
    data[:] = (np.arange(np.prod(SHAPE), dtype=np.uint64) % 65521).reshape(SHAPE)
    data.flush()
    return data


def test_convert_reads_whole_rows_within_the_block_budget(tmp_path, monkeypatch):
    expected = _write_npy(tmp_path / "scan.npy")
    reads: list[tuple[int, int, int]] = []
    original = DiffractionSource.read_rows

    def counting(self, start, stop):
        block = original(self, start, stop)
        reads.append((start, stop, block.nbytes))
        return block

    monkeypatch.setattr(DiffractionSource, "read_rows", counting)
    block_bytes = 512 * 1024
    convert(tmp_path / "scan.npy", tmp_path / "b.h5", block_bytes=block_bytes)
    row_bytes = SHAPE[1] * SHAPE[2] * SHAPE[3] * 2
    assert max(n for _, _, n in reads) <= max(block_bytes, row_bytes)
    assert sum(n for _, _, n in reads) == expected.nbytes  # every row exactly once
    assert [s for s, _, _ in reads] == sorted(s for s, _, _ in reads)
    assert len(reads) == SHAPE[0] // max(1, block_bytes // row_bytes)
    with open_bundle(tmp_path / "b.h5") as b:
        np.testing.assert_array_equal(b.diffraction[()], expected)


def _peak_copy_bytes(source, target, block_bytes) -> int:
    # A first read imports the readers' lazy modules (dask's scheduler, ...):
    # megabytes of Python objects that are no pattern data, so done untraced.
    source.read_rows(0, 1)
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        copy_patterns(source, target, block_bytes=block_bytes)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak


def test_copy_peak_memory_is_a_fraction_of_the_scan(tmp_path):
    """tracemalloc sees numpy's allocations: the copy's peak stays near one block.

    The source is an HDF5 stack, whose reads allocate new arrays (a memory
    map's slices are views that tracemalloc cannot see, so they would prove
    nothing here).
    """
    data_bytes = int(np.prod(SHAPE)) * 2
    with h5py.File(tmp_path / "stack.h5", "w") as f:
        f.create_dataset("frames", shape=(SHAPE[0] * SHAPE[1], *SHAPE[2:]), dtype=np.uint16,
                         fillvalue=7)
    with open_diffraction(tmp_path / "stack.h5", scan_shape=SHAPE[:2]) as src, \
            h5py.File(tmp_path / "out.h5", "w") as f:
        target = f.create_dataset("d", shape=SHAPE, dtype=src.dtype, chunks=(1, 1, *SHAPE[2:]))
        peak = _peak_copy_bytes(src, target, block_bytes=256 * 1024)
        assert target[-1, -1, 0, 0] == 7
    # one row is 184 kB; allow a few blocks of slack, far below the 8.8 MB scan
    assert peak < data_bytes / 8, f"peak {peak} bytes for a {data_bytes}-byte scan"
    # control: tracemalloc does see pattern data; one block of the whole scan peaks above it
    with open_diffraction(tmp_path / "stack.h5", scan_shape=SHAPE[:2]) as src:
        whole = _peak_copy_bytes(src, np.empty(SHAPE, np.uint16), block_bytes=data_bytes)
    assert whole >= data_bytes


def test_rsciio_lazy_source_is_read_block_by_block(tmp_path):
    """A dask-backed source (RosettaSciIO, lazy=True) computes only the requested rows."""
    import warnings

    import hyperspy.api as hs

    data = (np.arange(np.prod(SHAPE)) % 251).astype(np.uint16).reshape(SHAPE)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        s = hs.signals.Signal2D(data)
        s.save(tmp_path / "scan.hspy", chunks=(1, SHAPE[1], *SHAPE[2:]))
    del s
    with open_diffraction(tmp_path / "scan.hspy") as src, \
            h5py.File(tmp_path / "out.h5", "w") as f:
        assert src.reader == "rsciio HSPY" and src.chunk_rows == 1
        target = f.create_dataset("d", shape=SHAPE, dtype=src.dtype)
        peak = _peak_copy_bytes(src, target, block_bytes=256 * 1024)
        np.testing.assert_array_equal(target[()], data)
    assert peak < data.nbytes / 8, f"peak {peak} bytes for a {data.nbytes}-byte scan"


def _resident_bytes() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")  # pragma: no cover


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs Linux /proc")
def test_memory_mapped_mrc_does_not_stay_resident(tmp_path, monkeypatch):
    """Pages of the MRC memory map are let go after each block is copied.

    Resident memory is sampled after every block. The first blocks warm up
    allocator pools and HDF5 caches (a bounded ~10 MiB); from then on it must
    stay flat while the second half of the scan (16 MiB) streams through.
    Without releasing the pages (the control) it grows by that half.
    """
    shape = (64, 64, 64, 64)  # 32 MiB of uint16
    data_bytes = int(np.prod(shape)) * 2
    path = tmp_path / "scan.mrc"
    with mrcfile.new_mmap(path, shape=(shape[0] * shape[1], *shape[2:]), mrc_mode=6) as m:
        for k in range(0, len(m.data), 512):
            m.data[k:k + 512] = k // 512 + 1
    original = DiffractionSource.read_rows

    def growth_over_second_half(out_name) -> int:
        samples = []

        def sampling(self, start, stop):
            block = original(self, start, stop)
            samples.append(_resident_bytes())
            return block

        monkeypatch.setattr(DiffractionSource, "read_rows", sampling)
        convert(path, tmp_path / out_name, scan_shape=shape[:2], block_bytes=2**20)
        monkeypatch.setattr(DiffractionSource, "read_rows", original)
        assert len(samples) == 32
        return samples[-1] - samples[len(samples) // 2 - 1]

    growth = growth_over_second_half("a.h5")
    assert growth < data_bytes / 16, f"resident memory grew {growth} bytes over 16 MiB read"
    monkeypatch.setattr(source_module, "_release_pages", lambda root, view: None)
    control = growth_over_second_half("b.h5")
    assert control > data_bytes / 4, f"control grew only {control} bytes"
    with open_bundle(tmp_path / "a.h5") as b:
        assert b.diffraction[0, 0, 0, 0] == 1 and b.diffraction[-1, -1, 0, 0] == 8
