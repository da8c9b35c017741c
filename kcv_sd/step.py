"""One denoising step: what it does (`StepSpec`), what it takes (`StepInputs`,
`LoopInputs`) and its body, which the step-by-step loop and the compiled
`tf.while_loop` both run.

A step predicts the noise with the UNet (and the ControlNets, from their
control images' embeddings computed once per call, their scaled residuals
summed), combines the two classifier-free-guidance halves, applies
the sampler's update and, when inpainting, re-imposes the init latents
outside the mask. A stochastic sampler's fresh noise is drawn inside the
step from per-image keys and the step index (`fresh_noise`), so the
compiled loop and the step-by-step loop draw the same. `advance` runs step
`i` of a whole run: it picks the step's variant (guided or not after a
guidance cutoff, ControlNets inside their window or not) in Python when the
run's flags are numpy arrays, and with `tf.cond` when they are tensors.
"""

import dataclasses
import math
from typing import NamedTuple

import tensorflow as tf

from kcv_sd.routing import CPU_ROUTES, device_routes, static_routes
from kcv_sd.samplers import SAMPLERS
from kcv_sd.samplers.base import add_noise
from kcv_sd.token_merging import merging
from kcv_sd.tokenizer import MAX_PROMPT_LENGTH
from kcv_sd.unet import control_input_names, deep_cache_channels


@dataclasses.dataclass(frozen=True)
class StepSpec:
    """What a compiled step (or loop of steps) does; equal specs share one
    compiled function, so a spec is its cache key."""

    sampler: str  # a name from `kcv_sd.samplers.SAMPLERS`
    guided: bool  # classifier-free guidance: both halves in one UNet call
    controlnets: tuple = ()  # `ControlNet` models, compared by identity
    guess_mode: bool = False  # ControlNets see the conditional half only
    cutoff: bool = False  # loops only: guided steps, then conditional-only ones
    inpaint: bool = False  # keep the init latents outside the mask
    # DeepCache: full UNet steps keep features (the state's last tensor) that
    # the shallow steps between them reuse; which steps are which is an input.
    deep_cache: bool = False
    shallow: bool = False  # single steps only: this is a shallow DeepCache step
    token_merging: float = 0.0  # ToMe SD's ratio at the first level (`kcv_sd.token_merging`)
    # The layers' kernel routes (`kcv_sd.routing.routes`) at `size`, or None to
    # choose at run time; sizes whose routes agree share a trace.
    routes: tuple = None
    size: tuple = dataclasses.field(default=None, compare=False)  # (batch, height, width)
    context_length: int = dataclasses.field(default=MAX_PROMPT_LENGTH, compare=False)  # text tokens, with `size`

    def variant(self, guided, controlled, shallow=False):
        """The single step a run of this spec takes where guidance is `guided`,
        the ControlNets are `controlled` and DeepCache's pass is `shallow`;
        its `routes` are still to be set for its models."""
        return dataclasses.replace(
            self, guided=guided, cutoff=False, controlnets=self.controlnets if controlled else (),
            guess_mode=self.guess_mode and controlled, routes=None, shallow=shallow)


class StepInputs(NamedTuple):
    """The inputs of one step; `state` is the sampler's tuple."""

    latent: tf.Tensor  # (B, h, w, C)
    state: tuple
    t_embed: tf.Tensor  # (1, timestep_dim)
    context: tf.Tensor  # (2B or B, T, context_dim): unconditional half first
    guidance_scale: tf.Tensor  # ()
    coefficients: tf.Tensor  # (K,): the sampler's row for this step
    control_embeddings: tuple = ()  # with ControlNets: each one's embedding of its image (B, h, w, C0)
    control_scales: tf.Tensor = ()  # with ControlNets: (ControlNets, residuals)
    blend: tuple = ()  # inpainting: (init_latent, noise, mask (B, h, w, 1), level (2,))
    fresh: tuple = ()  # stochastic samplers: (noise keys (B, 2) int32, step index () int32)


class LoopInputs(NamedTuple):
    """The inputs of a whole run, per step where they change (leading axis:
    steps). `guided_at` and `control_keep` are numpy for the step-by-step
    loop (a Python choice per step) and tensors inside the compiled loop."""

    latent: tf.Tensor
    state: tuple
    t_embeds: tf.Tensor  # (steps, timestep_dim)
    context: tf.Tensor
    guidance_scale: tf.Tensor
    coefficients: tf.Tensor  # (steps, K)
    control_embeddings: tuple = ()
    control_scales: tf.Tensor = ()  # (steps, ControlNets, residuals)
    control_keep: tf.Tensor = ()  # bool (steps,): any ControlNet inside its window
    conditional_context: tf.Tensor = ()  # with a cutoff: the conditional half of `context`
    guided_at: tf.Tensor = ()  # with a cutoff: bool (steps,)
    blend: tuple = ()  # inpainting: (init_latent, noise, mask)
    noise_levels: tf.Tensor = ()  # inpainting: (steps + 1, 2)
    noise_keys: tf.Tensor = ()  # stochastic samplers: int32 (B, 2), `noise_keys`
    shallow_at: tf.Tensor = ()  # with DeepCache: bool (steps,), the steps that reuse features

    def at(self, spec, i, latent, state, guided, controlled):
        """Step `i`'s `StepInputs` in the variant (`guided`, `controlled`) of a run of `spec`."""
        return StepInputs(
            latent, state, self.t_embeds[i][None],  # not [i : i + 1]: a size XLA knows
            self.conditional_context if spec.cutoff and not guided else self.context,
            self.guidance_scale, self.coefficients[i],
            self.control_embeddings if controlled else (),
            self.control_scales[i] if controlled else (),
            (*self.blend, self.noise_levels[i + 1]) if spec.inpaint else (),
            (self.noise_keys, i) if SAMPLERS[spec.sampler].stochastic else ())


def guide(noise_uncond, noise_cond, guidance_scale):
    """Classifier-free guidance, in KerasCV's arithmetic order."""
    return noise_uncond + guidance_scale * (noise_cond - noise_uncond)


def keep_unmasked(latent, init_latent, noise, mask, level):
    """Inpainting after a step: outside the mask, the init latents noised to
    the level the step reached (diffusers' 4-channel-UNet inpainting)."""
    return mask * latent + (1 - mask) * add_noise(init_latent, noise, level)


def noise_keys(noise):
    """The keys of a run's fresh noise, int32 (B, 2): the bits of each
    image's first two initial noise values. The same start draws the same
    noise, and an image's draws don't depend on the batch it is in (so
    `kcv_sd.distribute`'s replicas draw what one device would)."""
    return tf.bitcast(tf.reshape(noise, [tf.shape(noise)[0], -1])[:, :2], tf.int32)


def fresh_noise(keys, step, shape):
    """Unit noise for `step`, float32 (B, *shape): each image's drawn from
    its key (`noise_keys`) folded with the step index. Philox bits are the
    same in eager, graph and XLA code, but TensorFlow's and XLA's float
    conversions differ, so the normal draw is done here (Box-Muller on the
    bits' top 23 as floats in [0, 1)): bitwise the same but for XLA's
    rounding of log, cos and sqrt."""
    size = tf.reduce_prod(shape)

    def one(key):
        seed = tf.random.experimental.stateless_fold_in(key, tf.cast(step, tf.int32), alg="philox")
        bits = tf.random.stateless_uniform([2, size], seed, minval=None, maxval=None, dtype=tf.uint32, alg="philox")
        mantissas = tf.bitwise.bitwise_or(tf.bitwise.right_shift(bits, 9), tf.constant(0x3F800000, tf.uint32))
        uniform = tf.bitcast(mantissas, tf.float32) - 1
        normal = tf.sqrt(-2 * tf.math.log(1 - uniform[0])) * tf.cos(2 * math.pi * uniform[1])
        return tf.reshape(normal, shape)

    return tf.map_fn(one, keys, fn_output_signature=tf.float32)


def step_body(spec, predict, inputs):
    """One step of `spec` on `StepInputs`, with `predict` from `noise_predictor`;
    returns (latent, state)."""
    sampler = SAMPLERS[spec.sampler]
    model_input = sampler.model_input(inputs.latent, inputs.coefficients)
    state, kept = (inputs.state[:-1], inputs.state[-1]) if spec.deep_cache else (inputs.state, None)
    noise = predict(model_input, inputs.t_embed, inputs.context, inputs.control_embeddings, inputs.control_scales,
                    kept)
    if spec.deep_cache:
        noise, kept = noise
    if spec.guided:
        batch = tf.shape(inputs.latent)[0]
        noise = guide(noise[:batch], noise[batch:], inputs.guidance_scale)
    fresh = (fresh_noise(*inputs.fresh, tf.shape(inputs.latent)[1:]),) if sampler.stochastic else ()
    latent, state = sampler.step(inputs.latent, noise, inputs.coefficients, state, *fresh)
    if spec.inpaint:
        latent = keep_unmasked(latent, *inputs.blend)
    return latent, (*state, kept) if spec.deep_cache else state


def choose(flag, run):
    """`run(flag)` for a Python or numpy bool, else `run(True)` or `run(False)` under `tf.cond`."""
    if not tf.is_tensor(flag):
        return run(bool(flag))
    return tf.cond(flag, lambda: run(True), lambda: run(False))


def advance(spec, step_for, inputs, i, latent, state):
    """Step `i` of a run of `spec` over `LoopInputs`: (latent, state) after it.

    `step_for(guided, controlled)` gives the function that runs that variant
    of the step on `StepInputs` (compiled, or `step_body` inside a loop)."""
    def run(guided, controlled, shallow):
        return step_for(guided, controlled, shallow)(inputs.at(spec, i, latent, state, guided, controlled))

    guided = inputs.guided_at[i] if spec.cutoff else spec.guided
    controlled = inputs.control_keep[i] if spec.controlnets else False
    shallow = inputs.shallow_at[i] if spec.deep_cache else False
    return choose(guided, lambda g: choose(controlled, lambda c: choose(shallow, lambda d: run(g, c, d))))


def noise_predictor(spec, unet, route_policy=CPU_ROUTES):
    """`predict(latent, t_embed, context, control_embeddings, control_scales)`:
    the UNet's noise prediction for the (doubled, if guided) batch, float32.

    With ControlNets, their scaled residuals are summed and fed to the UNet;
    in guess mode with guidance they see only the conditional half and the
    unconditional half gets zero residuals. With `spec.size`, the models are
    traced with static routes; always with `route_policy`'s (the device's)
    and the spec's token merging."""
    copies = 2 if spec.guided else 1
    conditional_only = spec.guess_mode and spec.guided

    def routed(model, copies):
        """`model` (a functional model), traced with routes for `copies` x the batch."""
        if spec.size is None:
            return model
        batch, height, width = spec.size

        def call(inputs):
            with static_routes(copies * batch, height, width, spec.context_length):
                return model(inputs)

        return call

    def predict(*args):
        # Read by the layers as they are traced: kernel routes, token merging.
        with device_routes(route_policy), merging(spec.token_merging):
            return predict_noise(*args)

    def predict_noise(latent, t_embed, context, control_embeddings=(), control_scales=(), features=None):
        batch = tf.shape(latent)[0]
        doubled = tf.concat([latent] * copies, axis=0)
        t_doubled = tf.repeat(t_embed, copies * batch, axis=0)
        inputs = {"latent": doubled, "timestep_embedding": t_doubled, "context": context}
        if spec.shallow:  # DeepCache: (noise, the kept features unchanged)
            shallow = routed(unet.model(deep_cache="shallow"), copies)({**inputs, "features": features})
            return tf.cast(shallow, tf.float32), features
        if spec.deep_cache:  # a full DeepCache step: (noise, features to keep)
            noise, kept = routed(unet.model(deep_cache="full"), copies)(inputs)
            return tf.cast(noise, tf.float32), tf.cast(kept, tf.float32)
        if not spec.controlnets:
            return tf.cast(routed(unet.model(), copies)(inputs), tf.float32)
        residuals = None
        for index, (controlnet, embedding) in enumerate(zip(spec.controlnets, control_embeddings)):
            if conditional_only:
                control_inputs = {"latent": latent, "timestep_embedding": t_doubled[:batch],
                                  "context": context[batch:], "control_embedding": embedding}
            else:
                control_inputs = {**inputs, "control_embedding": tf.concat([embedding] * copies, axis=0)}
            outputs = routed(controlnet.step_model(), 1 if conditional_only else copies)(control_inputs)
            scaled = [tf.cast(outputs[name], tf.float32) * control_scales[index, j]
                      for j, name in enumerate(controlnet.output_names)]
            if conditional_only:
                scaled = [tf.concat([tf.zeros_like(r), r], axis=0) for r in scaled]
            residuals = scaled if residuals is None else [a + b for a, b in zip(residuals, scaled)]
        names = control_input_names(unet.config)
        controlled = routed(unet.model(with_control=True), copies)
        return tf.cast(controlled({**inputs, **dict(zip(names, residuals))}), tf.float32)

    return predict


NOISE_KEYS = tf.TensorSpec((None, 2), tf.int32)  # `noise_keys`


def _state_spec(spec, latent_spec, config):
    size = len(SAMPLERS[spec.sampler].initial_state(tf.zeros((1, 8, 8, config.latent_channels))))
    kept = (tf.TensorSpec((None, None, None, deep_cache_channels(config)), tf.float32),) if spec.deep_cache else ()
    return tuple([latent_spec] * size) + kept


def step_signature(spec, config):
    """The `StepInputs` of `TensorSpec`s a compiled step of `spec` takes, for a `UNetConfig`."""
    latent = tf.TensorSpec((None, None, None, config.latent_channels), tf.float32)
    rows = SAMPLERS[spec.sampler].schedule(2).coefficients.shape[1]
    count = len(spec.controlnets)
    return StepInputs(
        latent, _state_spec(spec, latent, config),
        tf.TensorSpec((1, config.timestep_dim), tf.float32),
        tf.TensorSpec((None, None, config.context_dim), tf.float32),
        tf.TensorSpec((), tf.float32),
        tf.TensorSpec((rows,), tf.float32),
        tuple(tf.TensorSpec((None, None, None, c.embedding_channels), tf.float32) for c in spec.controlnets),
        tf.TensorSpec((count, config.num_skip_connections + 1), tf.float32) if count else (),
        (latent, latent, tf.TensorSpec((None, None, None, 1), tf.float32), tf.TensorSpec((2,), tf.float32))
        if spec.inpaint else (),
        (NOISE_KEYS, tf.TensorSpec((), tf.int32)) if SAMPLERS[spec.sampler].stochastic else ())


def loop_signature(spec, config):
    """The `LoopInputs` of `TensorSpec`s a compiled loop of `spec` takes."""
    one = step_signature(dataclasses.replace(spec, cutoff=False), config)

    def per_step(tensor_spec, extra=0):
        return tf.TensorSpec((None,) + tuple(tensor_spec.shape)[extra:], tensor_spec.dtype)

    flags = tf.TensorSpec((None,), tf.bool)
    return LoopInputs(
        one.latent, one.state, per_step(one.t_embed, 1), one.context, one.guidance_scale,
        per_step(one.coefficients), one.control_embeddings,
        per_step(one.control_scales) if spec.controlnets else (),
        flags if spec.controlnets else (),
        one.context if spec.cutoff else (),
        flags if spec.cutoff else (),
        one.blend[:3] if spec.inpaint else (),
        tf.TensorSpec((None, 2), tf.float32) if spec.inpaint else (),
        one.fresh[0] if one.fresh else (),
        flags if spec.deep_cache else ())
