"""notebooks/quickstart.ipynb runs end to end in a fresh Jupyter kernel."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "quickstart.ipynb"
CELL_TIMEOUT = 600
# The kernel makes its own local session, sized like the test session.
KERNEL_SPARK_ARGS = (
    "--master local[2] --driver-memory 2g --conf spark.ui.enabled=false "
    "--conf spark.ui.showConsoleProgress=false --conf spark.sql.shuffle.partitions=4 "
    "--conf spark.default.parallelism=2 pyspark-shell"
)

# A Jupyter kernel with its own Spark driver JVM: the heavy tier.
pytestmark = [pytest.mark.slow, pytest.mark.heavy]


def test_quickstart_notebook_runs_every_cell(tmp_path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.read(NOTEBOOK, as_version=4)
    assert not any(cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code"), \
        "commit the notebook without outputs"
    for name in ("SPARK_REMOTE", "SPARK_CONNECT_MODE_ENABLED", "PYSPARK_GATEWAY_PORT",
                 "PYSPARK_GATEWAY_SECRET"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PYSPARK_SUBMIT_ARGS", KERNEL_SPARK_ARGS)
    monkeypatch.setenv("PYSPARK_PYTHON", sys.executable)
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    client = NotebookClient(notebook, timeout=CELL_TIMEOUT, startup_timeout=180,
                            kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}})
    try:
        client.execute()  # raises CellExecutionError naming the failing cell
    finally:
        nbformat.write(notebook, os.fspath(tmp_path / "quickstart.executed.ipynb"))
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert any("image/png" in o.get("data", {}) for o in outputs), "the recall plot is missing"
    text = "".join(o.get("text", "") for o in outputs)
    assert "numProbes=8" in text and "recall@10" in text
