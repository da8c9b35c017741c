"""DistributedPipeline on 3 logical CPU replicas against the single-device Pipeline.

Logical devices must be configured before TensorFlow initialises its devices,
which this test session already did, so the distributed run happens in a
fresh process: this file run as a script, printing its results as JSON.
Tracing the pipeline once per replica is the slow part (about a minute on 2
busy cores), so one replica count runs: 3 makes every batch but 3 uneven.
The ControlNet branch and decoding run per replica in the notebook tests
(one replica) and their sharding is the same code as here.

Tolerance: the tiny random-weight latents reach about 60, where float32
spacing is ~4e-6, and the single-device Pipeline itself differs by ~2e-4
between batch sizes (oneDNN picks kernels by shape). Results must agree to
1e-5 of the latents' magnitude.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow  # the distributed process traces for a minute or more
REPLICAS = 3
# (prompts, images per prompt, size): batches of 1, 3, 4 (2 prompts x 2) and
# 5, the last at 104x72 pixels, a 13x9 latent, odd at every UNet level. One
# prompt is two 77-token chunks with weights: the others are padded to two.
BATCHES = ((["a red car"], 1, (64, 64)),
           (["a room", "a (street:1.2), " + "a castle on a hill " * 16, "a bust"], 1, (64, 64)),
           (["a cat", "a dog"], 2, (64, 64)), ([f"scene {i}" for i in range(5)], 1, (104, 72)))
ARGUMENTS = {"num_inference_steps": 2, "seed": 11, "output_type": "latent"}
REPO = Path(__file__).resolve().parents[1]


def run_distributed():
    """In a fresh process: every batch on MirroredStrategy over logical CPUs."""
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * REPLICAS)
    from kcv_sd.distribute import DistributedPipeline

    strategy = tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(REPLICAS)])
    pipeline = DistributedPipeline(strategy, model="tiny", precision="float32", weights="random")
    return {"replicas": pipeline.num_replicas,
            "latents": [pipeline(prompts, num_images_per_prompt=n, width=width, height=height, **ARGUMENTS).tolist()
                        for prompts, n, (width, height) in BATCHES]}


@pytest.fixture(scope="session")
def distributed():
    """The fresh process, started first so that it runs beside the single-device references."""
    process = subprocess.Popen([sys.executable, __file__], cwd=REPO, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    yield process
    process.kill()


@pytest.fixture(scope="module")
def results(distributed, tiny_pipeline):
    references = [tiny_pipeline(prompts, num_images_per_prompt=n, width=width, height=height, **ARGUMENTS)
                  for prompts, n, (width, height) in BATCHES]
    out, err = distributed.communicate(timeout=900)
    assert distributed.returncode == 0, err[-3000:]
    return json.loads(out.splitlines()[-1]), references


def test_runs_on_every_replica(results):
    assert results[0]["replicas"] == REPLICAS


@pytest.mark.parametrize("case", range(len(BATCHES)), ids=[f"batch{len(p) * n}" for p, n, _ in BATCHES])
def test_same_images_in_the_same_order_as_one_device(results, case):
    distributed, references = results
    latents, reference = np.asarray(distributed["latents"][case], np.float32), references[case]
    assert latents.shape == reference.shape  # exactly the images asked for, padding dropped
    scale = np.abs(reference).max()
    assert np.abs(latents - reference).max() <= 1e-5 * scale
    if len(reference) > 1:  # distinct images, so a reordering could not pass
        assert np.abs(reference[0] - reference[-1]).max() > 1e-2 * scale


@pytest.mark.parametrize("replicas", [2, 3, 4])
@pytest.mark.parametrize("batch", [1, 3, 4, 5])
def test_shards_are_equal_contiguous_and_padded_with_the_last_image(replicas, batch):
    from kcv_sd.distribute import padded_rows

    rows = padded_rows(batch, replicas)
    assert len(rows) % replicas == 0 and len(rows) - batch < replicas
    assert rows[:batch].tolist() == list(range(batch)) and set(rows[batch:]) <= {batch - 1}


def test_single_device_options_are_refused_before_any_work(tiny_components):
    import tensorflow as tf

    from kcv_sd.distribute import DistributedPipeline
    from kcv_sd.errors import InvalidArgumentError

    pipeline = DistributedPipeline(tf.distribute.get_strategy(), components=tiny_components)
    with pytest.raises(InvalidArgumentError, match="does not take cfg_cutoff_step_ratio, init_image"):
        pipeline("a", init_image=np.zeros((64, 64, 3), np.uint8), cfg_cutoff_step_ratio=0.5)


if __name__ == "__main__":
    print(json.dumps(run_distributed()))
