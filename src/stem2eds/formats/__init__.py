"""The project's own file formats: one module reads, writes and validates each.

========================  ==========================================================
module                    file
========================  ==========================================================
:mod:`.bundle`            scan bundle (HDF5): diffraction, EDS, HAADF, calibration
:mod:`.rundir`            run folder: run.json, config.toml, weights, checkpoints, logs
:mod:`.prediction`        prediction file (HDF5): predicted EDS/HAADF maps and their std
:mod:`.metrics_file`      an experiment's metrics.json
:mod:`.targets_file`      an experiment's targets/<scan>.h5 (what each scan is scored against)
:mod:`.checkpoint`        safe loading of checkpoints and safetensors weights
:mod:`.names`             names read from files, checked before they become paths or keys
========================  ==========================================================

Everything else in the package calls these modules instead of opening the
files itself, so a layout is written down (and validated) in one place.
"""
