"""The example notebooks in docs/examples run top to bottom (nbclient, this Python's kernel)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "docs" / "examples"
NOTEBOOKS = ("quickstart", "own_files", "sparse_eds")


@pytest.fixture
def kernel(tmp_path, monkeypatch):
    # own_files.ipynb converts a real vendor file when the test data is fetched
    from builders import fetch

    monkeypatch.setenv("STEM2EDS_TESTDATA", str(fetch.cache_dir()))
    """A kernelspec for this very interpreter (so the notebooks use this checkout's stem2eds)."""
    spec = tmp_path / "jupyter" / "kernels" / "stem2eds-test"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "stem2eds test", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    return "stem2eds-test"


def _outputs(book) -> str:
    texts = []
    for cell in book.cells:
        for out in cell.get("outputs", []):
            texts.append(out.get("text", "") or json.dumps(out.get("data", {})))
    return "\n".join(texts)


def test_notebooks_are_stored_without_outputs():
    import nbformat

    for name in NOTEBOOKS:
        book = nbformat.read(EXAMPLES / f"{name}.ipynb", as_version=4)
        nbformat.validate(book)
        code = [c for c in book.cells if c.cell_type == "code"]
        assert code and all(not c.outputs and c.execution_count is None for c in code), name
        assert any("hyperspy" in c.source for c in code), name


@pytest.mark.slow
@pytest.mark.parametrize("name, expect", [
    ("quickstart", ["Pearson r", "scan_0033 (24, 20) (32, 32)"]),
    ("own_files", ["scan.mrc (320, 32, 32)", "20x16 scan of 32x32 uint16 patterns"]),
    ("sparse_eds", ["24 of 480 positions sampled", "90 % interval coverage"]),
])
def test_notebook_runs(name, expect, kernel, tmp_path):
    import nbformat
    from nbclient import NotebookClient

    book = nbformat.read(EXAMPLES / f"{name}.ipynb", as_version=4)
    NotebookClient(book, timeout=300, kernel_name=kernel,
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    text = _outputs(book)
    if name == "own_files":
        from builders import fetch

        real = (fetch.cache_dir() / "tia" / "16x16-diffraction_imagel_5x5x256x256_EDS.emi")
        expect = expect + (["5x5 scan of 256x256 int32 patterns", "200 keV"]
                           if real.is_file() else ["not fetched here"])
    for snippet in expect:
        assert snippet in text, (name, snippet)
    assert "Traceback" not in text
