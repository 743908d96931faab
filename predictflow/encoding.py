"""The model's feature schema and its numeric encoding, derived from the contract.

The categorical domains are read off the `Literal` types of
`contract.CustomerFeatures`, so the request schema, the Feast feature view and
the model's columns cannot disagree. Training and serving both encode through
`encode_columns`: one implementation, no train/serve skew.
"""

from __future__ import annotations

import typing
from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np
import numpy.typing as npt

from predictflow.contract import CustomerFeatures

#: The 19 customer attributes, in contract order.
FEATURES: tuple[str, ...] = tuple(CustomerFeatures.model_fields)
NUMERIC: tuple[str, ...] = ("tenure", "monthly_charges", "total_charges")
BOOLEAN: tuple[str, ...] = ("senior_citizen",)


def _literal_values(annotation: object) -> tuple[str, ...]:
    for arg in typing.get_args(annotation):
        if typing.get_origin(arg) is Literal:
            return tuple(str(v) for v in typing.get_args(arg))
    raise TypeError(f"no Literal in {annotation!r}")


#: Each categorical feature and its allowed values, in a fixed order.
CATEGORICAL: dict[str, tuple[str, ...]] = {
    name: _literal_values(field.annotation)
    for name, field in CustomerFeatures.model_fields.items()
    if name not in NUMERIC and name not in BOOLEAN
}

#: The model's input columns: numeric and boolean as they are, categoricals
#: one-hot encoded as `name=value`.
ENCODED_FEATURES: tuple[str, ...] = (
    *NUMERIC,
    *BOOLEAN,
    *(f"{name}={value}" for name, values in CATEGORICAL.items() for value in values),
)

#: For each encoded column, the index in FEATURES of the field it encodes:
#: contributions of one-hot columns add up to their field's.
FIELD_OF_COLUMN: tuple[int, ...] = tuple(
    FEATURES.index(column.split("=", 1)[0]) for column in ENCODED_FEATURES
)

_OFFSETS: dict[str, int] = {}
_position = len(NUMERIC) + len(BOOLEAN)
for _name, _values in CATEGORICAL.items():
    _OFFSETS[_name] = _position
    _position += len(_values)
_CODES: dict[str, dict[str, int]] = {
    name: {value: i for i, value in enumerate(values)}
    for name, values in CATEGORICAL.items()
}


def encode_columns(columns: Mapping[str, Sequence[object]]) -> npt.NDArray[np.float32]:
    """Encode feature columns (name -> values, one per customer) into a matrix.

    Raises `ValueError` on a missing value or a category outside the contract.
    """
    n = len(columns[FEATURES[0]])
    out = np.zeros((n, len(ENCODED_FEATURES)), dtype=np.float32)
    col = 0
    for name in (*NUMERIC, *BOOLEAN):
        values = np.asarray(columns[name], dtype=np.float32)
        if values.shape != (n,) or np.isnan(values).any():
            raise ValueError(f"feature {name!r} has missing values")
        out[:, col] = values
        col += 1
    rows = np.arange(n)
    for name, codes in _CODES.items():
        try:
            idx = np.fromiter(
                (codes[v] for v in columns[name]),  # type: ignore[index]
                dtype=np.intp,
                count=n,
            )
        except KeyError as exc:
            raise ValueError(
                f"feature {name!r}: unknown value {exc.args[0]!r}"
            ) from None
        out[rows, _OFFSETS[name] + idx] = 1.0
    return out


def encode_rows(rows: Sequence[Mapping[str, object]]) -> npt.NDArray[np.float32]:
    """Encode customers given as feature dicts (the serving path)."""
    return encode_columns({name: [row[name] for row in rows] for name in FEATURES})
