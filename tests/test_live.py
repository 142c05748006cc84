"""``stem2eds live``: against libertem-live's Merlin simulator on 127.0.0.1 and its memory detector.

The final live maps equal ``stem2eds predict`` on the same frames; the
partial file is written while acquiring and says it is not complete.
"""

from __future__ import annotations

import socket

import h5py
import numpy as np
import pytest

pytest.importorskip("libertem_live")

from builders import ELEMENTS, make_raw_scan, small_config  # noqa: E402


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A trained run, a 12x10 scan of 32x32 frames, and its offline prediction."""
    from stem2eds.formats.bundle import open_bundle
    from stem2eds.predict.bundle import predict_bundle
    from stem2eds.preprocess import PreprocessSettings
    from stem2eds.train.fit import train

    folder = tmp_path_factory.mktemp("live")
    make_raw_scan(folder / "train.h5", seed=11)
    scan = make_raw_scan(folder / "other.h5", seed=12)
    cfg = small_config(targets=("eds", "haadf"), max_epochs=2,
                       preprocess=PreprocessSettings(bin_factor=2, eds_kernel=3,
                                                     origin_sample=40))
    run = train([folder / "train.h5"], folder / "run", cfg, quiet=True)
    ref = predict_bundle(run, scan, folder / "ref.h5")
    with open_bundle(scan) as s:
        frames = s.diffraction[()]
    return run, frames, _maps(ref), folder


def _maps(path) -> dict[str, np.ndarray]:
    with h5py.File(path, "r") as f:
        out = {el: f["eds"][el][()] for el in f["eds"]}
        out["haadf"] = f["haadf"][()]
        out["attrs"] = dict(f.attrs)
    return out


def _assert_equal(got, ref) -> None:
    for key in (*ELEMENTS, "haadf"):
        np.testing.assert_allclose(got[key], ref[key], rtol=1e-5, atol=1e-6)


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@pytest.fixture
def merlin_sim(setup, tmp_path):
    """libertem-live's Merlin simulator serving the scan as a MIB file on 127.0.0.1."""
    from libertem_live.detectors.merlin.sim import CameraSim

    from stem2eds.libertem.mib import write_mib

    _, frames, _, _ = setup
    hdr = write_mib(tmp_path / "scan.mib", frames)
    data_port, control_port, trigger_port = _free_ports(3)
    sim = CameraSim(path=str(hdr), nav_shape=frames.shape[:2], host="127.0.0.1",
                    data_port=data_port, control_port=control_port, trigger_port=trigger_port)
    sim.start()
    sim.wait_for_listen()
    yield data_port, control_port
    sim.stop()


def test_mib_file_reads_back(setup, tmp_path):
    from libertem.api import Context

    from stem2eds.libertem.mib import write_mib

    _, frames, _, _ = setup
    hdr = write_mib(tmp_path / "scan.mib", frames[:3])
    ctx = Context.make_with("inline")
    try:
        ds = ctx.load("auto", path=str(hdr))
        assert tuple(ds.shape) == (3, 10, 32, 32)
        from libertem.udf.raw import PickUDF

        roi = np.zeros((3, 10), bool)
        roi[2, 7] = True
        picked = ctx.run_udf(ds, PickUDF(), roi=roi)["intensity"].raw_data[0]
    finally:
        ctx.close()
    np.testing.assert_array_equal(picked, frames[2, 7])


def test_live_merlin_final_maps_equal_offline(setup, merlin_sim, run_cli, tmp_path):
    run, _, ref, _ = setup
    data_port, control_port = merlin_sim
    out = tmp_path / "live"
    code, stdout, err = run_cli("live", run, "--detector", "merlin", "--host", "127.0.0.1",
                                "--port", data_port, "--api-port", control_port,
                                "--scan-shape", "12x10", "--out", out)
    assert code == 0, err
    assert stdout.strip() == str(out / "prediction.h5")
    got = _maps(out / "prediction.h5")
    assert bool(got["attrs"]["complete"]) and int(got["attrs"]["frames_done"]) == 120
    _assert_equal(got, ref)
    assert not (out / "frames.npy").exists()  # the recording is removed
    assert "frames/s" in err  # the plain-line view (stderr is not a terminal)


def test_live_memory_partial_files_and_live_final(setup, tmp_path, monkeypatch):
    """Partial files while acquiring (complete=False, NaN where not acquired); final="live"."""
    from stem2eds.libertem import live as live_mod
    from stem2eds.libertem.live import LiveSettings, predict_live

    run, frames, ref, _ = setup
    seen = []
    real_write = live_mod._write

    def spy(out, udf, maps, done, eds, complete):
        path = real_write(out, udf, maps, done, eds, complete)
        seen.append(_maps(path))
        return path

    monkeypatch.setattr(live_mod, "_write", spy)
    states = []
    settings = LiveSettings(detector="memory", interval=1e-6, final="live")
    path = predict_live(run, tmp_path / "out", settings, data=frames, on_update=states.append)
    partial = [m for m in seen if not m["attrs"]["complete"]]
    assert partial, "no partial file was written"
    first = partial[0]
    done = int(first["attrs"]["frames_done"])
    assert 0 < done < 120 and np.isnan(first["Ge"]).sum() == 120 - done
    assert states[-1].frames_done == 120
    final = _maps(path)
    assert bool(final["attrs"]["complete"]) and "per frame" in final["attrs"]["origins"]
    # per-frame origins instead of the fitted plane: close to, not equal to, offline
    for el in ELEMENTS:
        assert np.abs(final[el] - ref[el]).max() < 0.05


def test_live_refusals(setup, run_cli, tmp_path):
    run, _, _, _ = setup
    code, _, err = run_cli("live", run, "--detector", "merlin", "--out", tmp_path / "o")
    assert code == 2 and "--scan-shape" in err
    code, _, err = run_cli("live", run, "--interval", "0", "--scan-shape", "4x4",
                           "--out", tmp_path / "o")
    assert code == 2 and "--interval" in err
