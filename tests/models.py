"""Small models several test modules share."""

import keras

L = keras.layers


def two_bn_model(momentum: float = 0.5) -> keras.Model:
    """Dense-BN-ReLU-Dense-BN(center=False)-softmax on 6 features: two BN layers, one without beta."""
    return keras.Sequential(
        [
            keras.Input((6,)),
            L.Dense(4, use_bias=False, name="dense"),
            L.BatchNormalization(momentum=momentum, name="bn1"),
            L.Activation("relu"),
            L.Dense(3, use_bias=False, name="dense2"),
            L.BatchNormalization(center=False, name="bn2"),
            L.Dense(2, activation="softmax", name="head"),
        ],
        name="net",
    )
