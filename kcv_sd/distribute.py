"""Batch-parallel generation over the replicas of a `tf.distribute` strategy.

Each replica (a TPU core under TPUStrategy, a GPU under MirroredStrategy)
encodes, denoises and decodes a contiguous share of the batch with the
pipeline's own models and denoising loop. The caller gets exactly the images
asked for, in the single-device order, from the noise the single-device
`Pipeline` draws for the same seed: the full batch's noise is drawn once,
outside the replicas and exactly as `Pipeline` draws it, and each replica
takes its slice.

Uneven batches: replicas run one program on equal shapes (a TPU requirement),
so every replica takes ceil(batch / replicas) images; the last shards are
padded with repeats of the final image and the padding is dropped. Up to
replicas - 1 images of work are wasted; results are unaffected.
"""

import dataclasses
import functools
import math

import numpy as np
import tensorflow as tf
from PIL import Image

from kcv_sd.emphasis import emphasize
from kcv_sd.errors import InvalidArgumentError
from kcv_sd.pipeline import COMPILED_FUNCTIONS_KEPT, Pipeline, to_uint8
from kcv_sd.prepare import context_rows, prepare
from kcv_sd.prompts import chunk_batch
from kcv_sd.recent import RecentlyUsed
from kcv_sd.tokenizer import MAX_PROMPT_LENGTH

# `Pipeline.__call__` arguments that need the single-device pipeline.
SINGLE_DEVICE_ONLY = ("init_image", "strength", "mask_image", "tiled_decode", "cfg_cutoff_step_ratio", "deep_cache",
                      "token_merging")


def _tpu_cluster_resolver():
    """The TPU's resolver: named by TPU_NAME/TPU_CONFIG (Colab, Cloud TPU nodes) or
    attached to this VM (TPU VMs); None without a TPU."""
    try:
        return tf.distribute.cluster_resolver.TPUClusterResolver()
    except ValueError:
        if tf.config.list_physical_devices("TPU"):
            return tf.distribute.cluster_resolver.TPUClusterResolver(tpu="local")
        return None


@functools.cache
def default_strategy():
    """TPUStrategy on a TPU, MirroredStrategy on several GPUs, else TF's current strategy (one device).

    Cached: initialising the TPU system a second time would wipe what lives on it.
    """
    resolver = _tpu_cluster_resolver()
    if resolver is not None:
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    if len(tf.config.list_physical_devices("GPU")) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def is_tpu_strategy(strategy):
    return isinstance(strategy, (tf.distribute.TPUStrategy, tf.distribute.experimental.TPUStrategy))


def padded_rows(batch, num_replicas):
    """Batch rows in replica order: equal contiguous shards, the last ones padded with the final row."""
    per_replica = math.ceil(batch / num_replicas)
    return np.minimum(np.arange(per_replica * num_replicas), batch - 1)


class DistributedPipeline:
    """A `Pipeline` whose batch is split over the replicas of a `tf.distribute` strategy.

    Args:
        strategy: a `tf.distribute.Strategy`; `default_strategy()` when None.
        pipeline_kwargs: `Pipeline` arguments, its models built under
            `strategy.scope()` so every replica holds their variables.
            `precision` defaults to "mixed_bfloat16" on a TPU and
            `compiled_loop` to True (one while loop per replica rather than a
            graph that grows with the number of steps). `components`
            and ControlNet objects passed to `__call__` must have been built
            under `strategy.scope()` too (checkpoint paths and repo ids are
            loaded under it).
    """

    def __init__(self, strategy=None, **pipeline_kwargs):
        self.strategy = strategy or default_strategy()
        if is_tpu_strategy(self.strategy):
            pipeline_kwargs.setdefault("precision", "mixed_bfloat16")
        pipeline_kwargs.setdefault("compiled_loop", True)
        # Its compiled function runs the models on every replica's variables; a saved graph knows one device's.
        pipeline_kwargs.setdefault("graph_cache", False)
        with self.strategy.scope():
            self.pipeline = Pipeline(**pipeline_kwargs)
        self._generators = RecentlyUsed(COMPILED_FUNCTIONS_KEPT)

    @property
    def components(self):
        return self.pipeline.components

    @property
    def num_replicas(self):
        return self.strategy.num_replicas_in_sync

    def __call__(self, prompt, negative_prompt=None, progress=False, **options):
        """Generate images from text, optionally with ControlNets; `options`
        and the results are those of `Pipeline.__call__`.

        Not here: img2img, inpainting, tiled decoding and the guidance
        cutoff. `progress` is accepted for compatibility and ignored: each
        replica runs all steps inside one compiled call.
        """
        unsupported = sorted(set(options) & set(SINGLE_DEVICE_ONLY))
        if unsupported:
            raise InvalidArgumentError(
                f"DistributedPipeline does not take {', '.join(unsupported)}: use a Pipeline for that.")
        call = prepare(self.components, prompt, negative_prompt, control_scope=self.strategy.scope, **options)
        # Every replica encodes the same token batch as Pipeline (row order
        # changes the encoder's rounding) and keeps its images' rows.
        tokens, weights = chunk_batch(call.texts, self.pipeline.tokenizer)
        rows = padded_rows(call.batch, self.num_replicas)
        generate = self._replicated_generate(call.num_inference_steps, float(call.guidance_scale), call.sampler,
                                             call.output_type != "latent", call.plan)
        shards = generate(tf.constant(tokens), tf.constant(weights), tf.constant(call.prompt_of_image()[rows]),
                          tf.gather(call.noise, rows),
                          *(() if call.plan is None else map(tf.constant, call.plan.images)))
        output = np.concatenate([np.asarray(shard) for shard in shards])[:call.batch]
        self.pipeline.check_finite(output, "latents" if call.output_type == "latent" else "pixels", call.plan)
        if call.output_type == "latent":
            return output
        pixels = to_uint8(output)
        if call.output_type == "np":
            return pixels
        return [Image.fromarray(one) for one in pixels]

    def _replicated_generate(self, num_steps, guidance_scale, sampler, decode, plan):
        """A compiled function that runs each replica's share and returns the shards in replica order.

        One per configuration, traced once for any batch and size. Its
        arguments reach every replica whole; each replica slices its rows.
        Arguments: token ids and weights (prompts[, negatives], chunks, 77)
        (`kcv_sd.prompts.chunk_batch`), the prompt of each padded image, the
        padded noise, one control image per ControlNet.
        """
        control_key = None if plan is None else (
            tuple(id(c) for c in plan.controlnets), tuple(plan.scales), plan.keep.tobytes(),
            plan.keep.shape, plan.guess_mode)
        key = (num_steps, guidance_scale, sampler, decode, control_key)
        return self._generators.get(key, lambda: self._compile_generate(num_steps, guidance_scale, sampler,
                                                                          decode, plan))

    def _compile_generate(self, num_steps, guidance_scale, sampler, decode, plan):
        pipeline, num_replicas = self.pipeline, self.num_replicas
        guided = guidance_scale != 1

        def on_replica(tokens, weights, prompt_of_image, noise, *control_images):
            count = tf.shape(noise)[0] // num_replicas
            start = tf.distribute.get_replica_context().replica_id_in_sync_group * count
            noise = noise[start : start + count]
            mine = prompt_of_image[start : start + count]
            rows = tf.reshape(tokens, (-1, MAX_PROMPT_LENGTH))
            positions = tf.broadcast_to(tf.range(MAX_PROMPT_LENGTH, dtype=tf.int32), tf.shape(rows))
            encoded = tf.cast(pipeline.components.text_encoder({"tokens": rows, "positions": positions}), tf.float32)
            width = encoded.shape[-1]
            encoded = emphasize(tf.reshape(encoded, tf.concat([tf.shape(tokens), [width]], 0)), weights)
            encodings = tf.reshape(encoded, (tf.shape(tokens)[0], -1, width))
            context = tf.gather(encodings, context_rows(mine, tf.shape(tokens)[0], guided))
            control = None if plan is None else dataclasses.replace(plan, images=control_images).for_batch(count)
            latent = pipeline.denoise(noise, context, num_steps, guidance_scale, guided, sampler,
                                      control=control)
            return pipeline.decode(latent, tiled=False) if decode else latent

        latent_channels = pipeline.config.latent_channels
        signature = [tf.TensorSpec((None, None, MAX_PROMPT_LENGTH), tf.int32),
                     tf.TensorSpec((None, None, MAX_PROMPT_LENGTH), tf.float32), tf.TensorSpec((None,), tf.int32),
                     tf.TensorSpec((None, None, None, latent_channels), tf.float32)]
        signature += [tf.TensorSpec((None, None, 3), tf.float32)] * (0 if plan is None else len(plan.controlnets))

        @tf.function(input_signature=signature, autograph=False)
        def generate(*args):
            return self.strategy.experimental_local_results(self.strategy.run(on_replica, args=args))

        return generate
