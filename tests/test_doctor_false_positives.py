"""tools/doctor_false_positives.py: a healthy model has no finding, a loop without training=True is caught."""

import nbformat

from tools import doctor_false_positives as dfp

CELLS = [
    """import numpy as np, keras, tensorflow as tf
from keras import layers as L
keras.utils.set_random_seed(0)
rng = np.random.default_rng(0)
x_train = rng.normal(2.0, 3.0, size=(512, 8)).astype("float32")
y_train = (x_train[:, 0] > 2.0).astype("int64")
BATCH = 32

def mlp():
    return keras.Sequential([keras.Input((8,)), L.Dense(16, use_bias=False), L.BatchNormalization(momentum=0.9),
                             L.Activation("relu"), L.Dense(2, activation="softmax")])""",
    """healthy = mlp()
healthy.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
healthy.fit(x_train, y_train, epochs=4, batch_size=BATCH, verbose=0)""",
    """forgot = mlp()
optimizer = keras.optimizers.SGD(0.1)
loss_fn = keras.losses.SparseCategoricalCrossentropy()
for start in range(0, 512, BATCH):
    with tf.GradientTape() as tape:
        loss = loss_fn(y_train[start:start + BATCH], forgot(x_train[start:start + BATCH]))  # no training=True
    optimizer.apply_gradients(zip(tape.gradient(loss, forgot.trainable_variables), forgot.trainable_variables))
untrained = {"demo": mlp()}""",
]


def test_table_lists_the_right_findings(tmp_path, capsys):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(s) for s in CELLS])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = tmp_path / "tiny.ipynb"
    nbformat.write(nb, path)
    report = tmp_path / "table.md"
    assert dfp.main([str(path), "--report", str(report)]) == 0
    table = report.read_text()
    assert table.strip() == capsys.readouterr().out.strip()
    rows = {line.split(" | ")[1].split("<br>")[0]: line for line in table.splitlines() if line.startswith("| tiny")}
    assert set(rows) == {"`healthy`", "`forgot`", "`untrained['demo']`"}, rows
    assert "| none (+" in rows["`healthy`"] and "batch 32, **default data**" in rows["`healthy`"]
    assert "never_updated:error" in rows["`forgot`"] and "var_ratio" in rows["`forgot`"]
    assert "Models checked: 3." in table
