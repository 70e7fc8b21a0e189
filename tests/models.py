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


def mlp(*, dropout: float | None = None, bn_class: type = L.BatchNormalization, nested: bool = False) -> keras.Model:
    """Dense(5)-BN-ReLU[-Dropout]-Dense(4)-BN-Dense(3, softmax) on 6 features, not compiled.

    ``nested``: the first Dense-BN-ReLU block is a Sequential model inside the outer one
    (the transfer-learning layout ``Input -> base -> head``).
    """
    block = [L.Dense(5, name="dense1"), bn_class(name="bn1"), L.Activation("relu", name="relu")]
    if dropout is not None:
        block.append(L.Dropout(dropout, name="dropout"))
    head = [L.Dense(4, name="dense2"), bn_class(name="bn2"), L.Dense(3, activation="softmax", name="head")]
    if nested:
        return keras.Sequential([keras.Input((6,)), keras.Sequential(block, name="base"), *head], name="outer")
    return keras.Sequential([keras.Input((6,)), *block, *head], name="net")


def trained(model: keras.Model, x, y, *, steps: int = 3) -> keras.Model:
    """Compile with Adam and train ``steps`` steps of 8 examples: moving statistics, optimizer slots
    and iterations, and dropout's random state all move away from their initial values."""
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x[: 8 * steps], y[: 8 * steps], batch_size=8, epochs=1, shuffle=False, verbose=0)
    return model
