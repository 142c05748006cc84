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
            The same --seed gives the same bytes.""",
        example="""
            stem2eds simulate sim --scans 6 --scan-shape 40x30 --detector 256 --seed 0
            stem2eds simulate sim_small --scans 3 --scan-shape 16x12 --detector 64""")
    p.add_argument("out_dir", metavar="OUT_DIR", help="output folder (created if missing)")
    p.add_argument("--scans", type=int, default=6, help="number of scans in the series")
    p.add_argument("--scan-shape", default="110x45", help="probe positions ROWSxCOLS")
    p.add_argument("--detector", type=int, default=256, help="detector size in pixels (square)")
    p.add_argument("--dose", type=float, default=2e5,
                   help="electrons per diffraction pattern (series mean; the beam current "
                        "varies by 5 %% from scan to scan)")
    p.add_argument("--eds-dose", type=float, default=10.0,
                   help="X-ray counts per nm of film for a unit-yield element (EDS noise)")
    p.add_argument("--thickness", type=float, default=30.0, help="mean film thickness in nm")
    p.add_argument("--grain-scans", type=float, default=0.5,
                   help="fraction of the scans with rock-salt grains (0: all amorphous)")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--first-scan", type=int, default=33, help="number of the first scan")
    p.add_argument("--workers", type=int, default=2,
                   help="threads generating patterns (the output does not depend on it)")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=run)


def run(args) -> int:
    from . import parse_pair
    from ..simulate import SimulationSettings, simulate_series

    settings = SimulationSettings(n_scans=args.scans, scan_shape=parse_pair(args.scan_shape),
                                  detector=args.detector, dose=args.dose, eds_dose=args.eds_dose,
                                  thickness_nm=args.thickness, grain_scan_fraction=args.grain_scans,
                                  seed=args.seed, first_scan=args.first_scan, workers=args.workers)
    paths = simulate_series(args.out_dir, settings, quiet=args.quiet)
    for path in paths:
        print(path)
    return 0
