"""Zero padding then a valid convolution: the convolution of every SD model here.

Padding is explicit, symmetric or not, rather than Keras' 'same' (which pads
asymmetrically at stride 2). The variables are a plain `Conv2D`'s, in the
order KerasCV's `.h5` files list them (kernel, then bias).
"""

import keras


class PaddedConv2D(keras.layers.Layer):
    """`ZeroPadding2D(padding)` then `Conv2D(filters, kernel_size, strides)`.

    It builds from shapes and states its output shape, so wiring a model
    around it runs no `call`. `kcv_sd.unet_blocks.RoutedConv2D` runs the same
    variables through a routed kernel.
    """

    def __init__(self, filters, kernel_size, padding=0, strides=1,
                 kernel_initializer="glorot_uniform", **kwargs):
        super().__init__(**kwargs)
        self.padding2d = keras.layers.ZeroPadding2D(padding, dtype=self.dtype_policy)
        self.conv2d = keras.layers.Conv2D(filters, kernel_size, strides=strides,
                                          kernel_initializer=kernel_initializer,
                                          dtype=self.conv_policy())
        self.kernel_size = kernel_size
        self.strides = strides

    def conv_policy(self):
        """The dtype policy of the convolution's variables: the layer's own."""
        return self.dtype_policy

    def build(self, input_shape):
        self.conv2d.build(self.padding2d.compute_output_shape(input_shape))

    def compute_output_shape(self, input_shape):
        return self.conv2d.compute_output_shape(self.padding2d.compute_output_shape(input_shape))

    def call(self, inputs):
        return self.conv2d(self.padding2d(inputs))
