"""The small classifier head: embedding -> machine state / anomaly class probabilities.

Normalization (fitted on training windows) -> Dense(128, ReLU) -> Dropout -> Dense(softmax), trained
with class weights (inverse frequency) against imbalance and early stopping on validation loss,
keeping the best weights. Seeded: the same data and seed give the same head.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import config

HIDDEN = 128
DROPOUT = 0.3


@dataclass
class HeadResult:
    model: object  # keras.Model
    labels: list[str]
    epochs: int
    history: dict


def build_head(n_classes: int, train_embeddings: np.ndarray | None = None):
    import keras
    from keras import layers

    inputs = keras.Input(shape=(config.EMBEDDING_DIM,), name="embedding")
    norm = layers.Normalization(name="normalize")
    if train_embeddings is not None and len(train_embeddings):
        norm.adapt(train_embeddings)
    x = norm(inputs)
    x = layers.Dense(HIDDEN, activation="relu", name="hidden")(x)
    x = layers.Dropout(DROPOUT, name="dropout")(x)
    outputs = layers.Dense(n_classes, activation="softmax", name="probabilities")(x)
    return keras.Model(inputs, outputs, name="head")


def constant_head(label_count: int = 1):
    """A head for data with one class: it always answers that class (probability 1)."""
    import keras
    from keras import layers

    inputs = keras.Input(shape=(config.EMBEDDING_DIM,), name="embedding")
    dense = layers.Dense(label_count, name="probabilities", kernel_initializer="zeros",
                         bias_initializer=keras.initializers.Constant(1.0 / label_count))
    return keras.Model(inputs, dense(inputs), name="head")


def class_weights(y: np.ndarray, n_classes: int) -> dict[int, float]:
    counts = np.bincount(y, minlength=n_classes).astype(np.float64)
    present = counts > 0
    weights = np.zeros(n_classes)
    weights[present] = len(y) / (present.sum() * counts[present])
    return {i: float(w) for i, w in enumerate(weights)}


def train_head(x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray,
               labels: list[str], seed: int = 0, epochs: int = 200, patience: int = 15,
               batch_size: int = 64, verbose: int = 0) -> HeadResult:
    import keras

    keras.utils.set_random_seed(seed)
    if len(labels) < 2:
        return HeadResult(constant_head(max(1, len(labels))), labels, 0, {})
    model = build_head(len(labels), x_train)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    has_val = len(x_val) > 0
    callbacks = [
        keras.callbacks.EarlyStopping(
            monitor="val_loss" if has_val else "loss", patience=patience, restore_best_weights=True
        )
    ]
    history = model.fit(
        x_train, y_train,
        validation_data=(x_val, y_val) if has_val else None,
        epochs=epochs, batch_size=batch_size, shuffle=True,
        class_weight=class_weights(y_train, len(labels)),
        callbacks=callbacks, verbose=verbose,
    )
    hist = {k: [float(v) for v in vals] for k, vals in history.history.items()}
    return HeadResult(model, labels, len(hist.get("loss", [])), hist)
