"""Make the Keras test models (ONNX files that never were PyTorch) and their float64 references.

Needs TensorFlow and tf2onnx, which CI does not install; the outputs are checked in under
tests/data/onnx/. Run from the repository root:

    python -m venv /tmp/tf && /tmp/tf/bin/pip install tensorflow-cpu tf2onnx onnx
    /tmp/tf/bin/python scripts/make_keras_onnx.py

For each model it writes ``<name>.onnx`` (tf2onnx, opset 17, NHWC input) and ``<name>.npz`` with
a fixed input ``x`` (N, H, W, C), the target layer's activations ``A`` and the gradient ``G`` of
the ``target`` class score with respect to them, both from Keras itself in float64 (GradientTape),
and Keras's float64 ``logits``. ``layer`` names the Keras layer; its tensor in the ONNX graph is
found by the tests as the default (the input of the global pooling).
"""

from __future__ import annotations

import os

import numpy as np
import tensorflow as tf
import tf2onnx

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "data", "onnx")


def small_cnn(dtype: str) -> tf.keras.Model:
    """Conv, depthwise conv, batch norm, ReLU6, a residual Add, global average pooling, Dense."""
    tf.keras.backend.set_floatx(dtype)
    inputs = tf.keras.Input((32, 32, 3), name="image")
    x = tf.keras.layers.Conv2D(8, 3, strides=2, padding="same", use_bias=False)(inputs)
    x = tf.keras.layers.BatchNormalization()(x)
    x = tf.keras.layers.ReLU(6.0)(x)
    y = tf.keras.layers.DepthwiseConv2D(3, padding="same")(x)
    y = tf.keras.layers.ReLU(6.0)(y)
    y = tf.keras.layers.Conv2D(8, 1)(y)
    x = tf.keras.layers.Add()([x, y])
    x = tf.keras.layers.Conv2D(16, 3, strides=2, padding="same", name="last_conv")(x)
    x = tf.keras.layers.ReLU(6.0, name="last_relu")(x)
    x = tf.keras.layers.GlobalAveragePooling2D()(x)
    outputs = tf.keras.layers.Dense(10, name="logits")(x)
    return tf.keras.Model(inputs, outputs, name="keras_small_cnn")


def mobilenet_v2(dtype: str) -> tf.keras.Model:
    """Keras's own MobileNetV2 (alpha 0.35, 10 classes, random weights), logits out."""
    tf.keras.backend.set_floatx(dtype)
    return tf.keras.applications.MobileNetV2(input_shape=(96, 96, 3), alpha=0.35, weights=None, classes=10,
                                             classifier_activation=None)


MODELS = {"keras_small_cnn": (small_cnn, "last_relu"), "keras_mobilenet_v2": (mobilenet_v2, "out_relu")}


def make(name: str) -> None:
    build, layer = MODELS[name]
    tf.keras.utils.set_random_seed(0)
    model32 = build("float32")
    model32.trainable = False
    # calibrate batch norm (as tests/helpers.calibrated_model does for torchvision): each layer's
    # statistics are those of its input on random images, so activations stay O(1) through the
    # network and maps are not near-constant (untrained defaults shrink them towards zero)
    rng = np.random.default_rng(0)
    calibration = rng.random((16, *model32.input_shape[1:])).astype(np.float32)
    for lyr in model32.layers:
        if isinstance(lyr, tf.keras.layers.BatchNormalization):
            probe = tf.keras.Model(model32.inputs, lyr.input)
            seen = probe(calibration, training=False).numpy()
            axes = tuple(range(seen.ndim - 1))
            g, b, _, _ = lyr.get_weights()
            lyr.set_weights([1 + 0.1 * rng.standard_normal(g.shape), 0.1 * rng.standard_normal(b.shape),
                             seen.mean(axis=axes), seen.var(axis=axes) + 1e-3])
    spec = (tf.TensorSpec((None, *model32.input_shape[1:]), tf.float32, name="image"),)
    proto, _ = tf2onnx.convert.from_keras(model32, input_signature=spec, opset=17)
    with open(os.path.join(OUT, f"{name}.onnx"), "wb") as f:
        f.write(proto.SerializeToString())

    model64 = build("float64")
    model64.set_weights([w.astype(np.float64) for w in model32.get_weights()])
    x = rng.random((2, *model32.input_shape[1:]))
    feature = tf.keras.Model(model64.inputs, [model64.get_layer(layer).output, model64.output])
    target = np.array([3, 7])
    with tf.GradientTape() as tape:
        A, logits = feature(tf.constant(x), training=False)
        score = tf.reduce_sum(tf.gather(logits, target, axis=1, batch_dims=1))
    G = tape.gradient(score, A)
    np.savez_compressed(os.path.join(OUT, f"{name}.npz"), x=x.astype(np.float32), A=A.numpy(), G=G.numpy(),
                        logits=logits.numpy(), target=target, layer=layer)
    tf.keras.backend.set_floatx("float32")
    print(name, "written:", proto.graph.input[0].name, A.shape)


if __name__ == "__main__":
    os.makedirs(OUT, exist_ok=True)
    for model_name in MODELS:
        make(model_name)
