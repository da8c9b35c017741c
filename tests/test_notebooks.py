"""The Colab notebooks run top to bottom on the tiny config and write their images.

KCV_SD_NOTEBOOK_TINY=1 makes each notebook use the tiny model with random
weights, tiny sizes and 2 steps; each runs in its own kernel in a temporary
folder, where it writes outputs/.
"""

from pathlib import Path

import nbclient
import nbformat
import pytest
from PIL import Image

pytestmark = pytest.mark.slow  # a kernel each, minutes on 2 cores
NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
CELL_TIMEOUT_S = 300
# Images each notebook must write under outputs/.
EXPECTED_IMAGES = {
    "colab_gpu.ipynb": ["text_0.png", "text_1.png", "depth_0.png", "aspect_ratio_sheet.png",
                        "bench/cold_warm.png", "bench_stages.png"],
    "colab_tpu.ipynb": ["text_0.png", "text_1.png", "depth_0.png", "aspect_ratio_sheet.png",
                        "batch_timing.png"],
}


@pytest.mark.parametrize("name", sorted(EXPECTED_IMAGES))
def test_notebook_runs_on_the_tiny_config(name, tmp_path, monkeypatch):
    monkeypatch.setenv("KCV_SD_NOTEBOOK_TINY", "1")
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = nbclient.NotebookClient(notebook, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError at the first failing cell
    errors = [output for cell in notebook.cells if cell.cell_type == "code"
              for output in cell.outputs if output.output_type == "error"]
    assert not errors
    for relative in EXPECTED_IMAGES[name]:
        with Image.open(tmp_path / "outputs" / relative) as image:
            assert min(image.size) >= 64, relative
