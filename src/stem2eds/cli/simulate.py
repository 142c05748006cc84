"""``stem2eds simulate``: write a simulated Ge-Sb-Te scan series as scan bundles."""

from __future__ import annotations

from . import add_command


def register(subparsers) -> None:
    p = add_command(
        subparsers, "simulate",
        help="simulate a 4D-STEM + EDS + HAADF scan series (the embedded default data)",
        description="""
            Simulate a series of scans of one Ge-Sb-Te film (elements O, Si, Ge, Sb,
            Te) and write OUT_DIR/scan_0033.h5, scan_0034.h5, ... one scan bundle
            per scan: uint16 diffraction (Rx, Ry, Qx, Qy) from kinematic amorphous
            scattering with composition-dependent short-range order, rock-salt GST
            grains in some scans, a drifting beam centre and Poisson noise; grainy
            quantified EDS maps; HAADF; and the ground truth (truth/<El>,
            simulation/origin, simulation/grain_mask, simulation/thickness).
            The same --seed gives the same bytes. --engine multislice propagates a
            200 kV nanobeam through amorphous atomic models (abTEM): speckled
            patterns, a 6-14 nm film, ADF from the same run; it defaults to a
            24x24 scan on a 128 px detector and caches the noise-free patterns in
            OUT_DIR/.multislice-cache.""",
        example="""
            stem2eds simulate sim --scans 6 --scan-shape 40x30 --detector 256 --seed 0
            stem2eds simulate sim_small --scans 3 --scan-shape 16x12 --detector 64
            stem2eds simulate sim_ms --engine multislice --scan-shape 20x20 --seed 16""")
    from ..simulate import SimulationSettings
    from . import parse_pair
    from .options import Option, add_settings_options

    p.add_argument("out_dir", metavar="OUT_DIR", help="output folder (created if missing)")
    add_settings_options(p, SimulationSettings, [
        Option("n_scans", "--scans"),
        Option("scan_shape", metavar="ROWSxCOLS", type=lambda t: parse_pair(t, "scan_shape")),
        "detector", "dose", "eds_dose", Option("thickness_nm", "--thickness"),
        Option("grain_scan_fraction", "--grain-scans"), "seed", "first_scan", "workers",
        "q_pixel_scale", "binning", "engine"])
    p.set_defaults(func=run)


def run(args) -> int:
    from ..simulate import SimulationSettings, simulate_series
    from .options import given

    overrides = given(args, SimulationSettings)
    if overrides.get("engine") == "multislice":
        from ..simulate.multislice import multislice_defaults
        overrides = {**multislice_defaults(), **overrides}
    settings = SimulationSettings(**overrides)
    paths = simulate_series(args.out_dir, settings, quiet=args.quiet)
    for path in paths:
        print(path)
    return 0
