"""``stem2eds convert``: microscope files -> one scan bundle."""

from __future__ import annotations

import shlex
import sys

from . import add_command

#: Settings (arguments of :func:`stem2eds.convert.convert`) whose flag is not
#: the name with dashes.
FLAGS = {"r_pixel_size": "--r-pixel", "q_pixel_size": "--q-pixel", "r_pixel": "--r-pixel",
         "q_pixel": "--q-pixel", "beam_energy_kev": "--beam-energy", "block_bytes": "--block-mb"}


def register(subparsers) -> None:
    p = add_command(
        subparsers, "convert",
        help="convert a 4D-STEM file (+ EDS maps or spectrum image, HAADF) into a scan bundle",
        description="""
            Convert a 4D-STEM scan and its EDS and HAADF data into one scan bundle
            (HDF5; layout in the README). Diffraction: MRC (3D stack of frames in
            scan C order, or 4D), .npy, HDF5 (--dataset, or the only 4D dataset,
            incl. py4DSTEM/EMD files), or any format RosettaSciIO reads (Velox .emd,
            DM4, EMPAD .xml, blockfile, .hspy, ...). Patterns are copied in blocks of
            whole scan rows; the whole scan is never held in memory.

            EDS (--eds): a folder of per-element maps named by symbol (Ge.tif, O.png,
            Si.npy, Te.csv) in atomic fraction or percent (--eds-unit; by default
            percent when the largest value exceeds 1.5, fraction when it is at most 1,
            refused as ambiguous in between), or a spectrum image (Velox .emd, Bruker .bcf, .hspy)
            quantified per position with exspy's Cliff-Lorimer method.

            Without --diffraction, a bundle of maps only (EDS and/or HAADF) is written,
            e.g. for sparse EDS or registration. EDS or HAADF maps on another grid than
            the scan are stored as eds_unregistered/haadf_unregistered for
            `stem2eds preprocess --register`, with their pixel size from
            --eds-pixel-size/--haadf-pixel-size or the file's own calibration.

            Calibrations are read from the file where it has them and checked (R a
            length, Q a reciprocal length or angle, in plausible ranges); a file whose
            calibration cannot be right is refused until the flag gives the value. The
            flags override the file.
            """,
        example="""
            stem2eds convert --diffraction scan_0033.mrc --scan-shape 110x45 \\
                --eds maps_0033/ --haadf haadf_0033.tif --elements O,Si,Ge,Sb,Te \\
                --r-pixel 1.053 --q-pixel 0.1451 --out scan_0033.h5
            """)
    p.add_argument("--diffraction", metavar="FILE",
                   help="4D-STEM file (.mrc, .npy, .h5/.emd, .dm4, .xml, .blo, .hspy, ...); "
                        "without it, a bundle of EDS/HAADF maps only")
    p.add_argument("--scan-shape", metavar="RxC",
                   help="scan rows x columns, required for a flat stack of frames (e.g. 110x45)")
    p.add_argument("--dataset", metavar="PATH",
                   help="HDF5 path of the patterns (default: the only 4D dataset)")
    p.add_argument("--eds", metavar="PATH",
                   help="folder of per-element maps, or a spectrum-image file")
    p.add_argument("--haadf", metavar="FILE",
                   help="HAADF image (.tif, .png, .npy, .csv) or a file holding one (.emd)")
    p.add_argument("--elements", metavar="LIST",
                   help="EDS elements to keep, in order, e.g. O,Si,Ge,Sb,Te "
                        "(default: every map found)")
    p.add_argument("--k-factors", metavar="LIST",
                   help="Cliff-Lorimer k-factors for a spectrum image, e.g. O=1.0,Si=1.2,Ge=1.6 "
                        "(default: from the file's metadata)")
    p.add_argument("--eds-bin", type=int, default=1, metavar="N",
                   help="sum N x N positions of a spectrum image before quantifying it "
                        "(for low-count maps; the maps then have N times the scan step and "
                        "are stored for registration)")
    p.add_argument("--eds-unit", choices=("auto", "fraction", "percent"), default="auto",
                   help="unit of the maps in an --eds folder; auto: fraction if every value "
                        "is <= 1, percent if any exceeds 1.5, else refused as ambiguous; "
                        "fraction clips values up to 1.5 to 1")
    p.add_argument("--name", help="scan name (default: the output file's stem)")
    p.add_argument("--r-pixel", type=float, metavar="SIZE",
                   help="probe step (scan pixel size), in --r-unit")
    p.add_argument("--r-unit", metavar="UNIT",
                   help="unit of --r-pixel (default: nm; Å, pm, µm are converted to nm)")
    p.add_argument("--q-pixel", type=float, metavar="SIZE",
                   help="detector pixel size, in --q-unit")
    p.add_argument("--q-unit", metavar="UNIT",
                   help="unit of --q-pixel (default: 1/nm; 1/Å is converted to 1/nm, "
                        "rad to mrad)")
    p.add_argument("--beam-energy", type=float, metavar="KEV", help="beam energy in keV")
    p.add_argument("--eds-pixel-size", type=float, metavar="SIZE",
                   help="pixel size of EDS maps recorded on another grid, in --r-unit (default "
                        "nm): stored as eds_unregistered for preprocess --register "
                        "(default: the spectrum image's own calibration)")
    p.add_argument("--haadf-pixel-size", type=float, metavar="SIZE",
                   help="pixel size of a HAADF image on another grid, in --r-unit: stored as "
                        "haadf_unregistered (default: the file's own calibration)")
    p.add_argument("--block-mb", type=float, default=64.0, metavar="MB",
                   help="largest block of patterns held in memory while copying, MiB")
    p.add_argument("--out", required=True, metavar="BUNDLE.h5", help="scan bundle to write")
    p.set_defaults(func=run, setting_flags=FLAGS)


def run(args) -> int:
    from . import parse_pair
    from .options import name_flags
    from ..convert import convert
    from ..errors import InputError

    if not 0 < args.block_mb <= 2**20:  # NaN, inf and absurd sizes fail this too
        raise InputError(f"`block_mb` must be a positive number of MiB up to 1 TiB, "
                         f"got {args.block_mb}")
    scan_shape = parse_pair(args.scan_shape) if args.scan_shape else None
    result = convert(
        args.diffraction, args.out, scan_shape=scan_shape, dataset=args.dataset,
        eds=args.eds, haadf=args.haadf, elements=args.elements, name=args.name,
        r_pixel=args.r_pixel, r_unit=args.r_unit, q_pixel=args.q_pixel, q_unit=args.q_unit,
        beam_energy_kev=args.beam_energy, k_factors=args.k_factors,
        eds_unit=args.eds_unit, eds_bin=args.eds_bin, eds_pixel_size=args.eds_pixel_size,
        haadf_pixel_size=args.haadf_pixel_size,
        command=_command_line(args),
        block_bytes=int(args.block_mb * 2**20),
        echo=None if args.quiet else (
            lambda line: print(f"stem2eds convert: {name_flags(line, FLAGS)}", file=sys.stderr)),
        quiet=args.quiet)
    print(result.summary())
    return 0


def _command_line(args) -> str:
    """The command as given (options in a fixed order), for the provenance."""
    words = ["stem2eds", "convert"]
    for key, value in vars(args).items():
        if key in ("func", "command", "debug") or value in (None, False):
            continue
        flag = "--" + key.replace("_", "-")
        words += [flag] if value is True else [flag, str(value)]
    return shlex.join(words)
