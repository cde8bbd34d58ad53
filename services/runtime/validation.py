"""Enforces the input limits written in the contracts (the `tiermesh.common.v1.limits` option).

The checks for a message type are compiled once from its descriptor, so the numbers the
client reads in the .proto are exactly the numbers the server applies. A violation raises
InvalidArgument naming the field path and the limit, e.g.
`messages[2].content: 40001 characters is over the limit of 32000`.

Timestamps and Durations are always checked against the range their type defines (years 1 to
9999; ±10,000 years; nanos below a second), so no out-of-range value reaches code that converts
it; `min_value` / `max_value` on such a field bound it in seconds (a Timestamp's since the epoch).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from tiermesh.common.v1 import limits_pb2

from services.runtime.errors import InvalidArgument

Check = Callable[[Message, str], None]


def _fmt(n: float) -> str:
    return str(int(n)) if float(n).is_integer() else str(n)


def _is_map(field: FieldDescriptor) -> bool:
    mt = field.message_type
    return mt is not None and mt.GetOptions().map_entry


def _is_repeated(field: FieldDescriptor) -> bool:
    return bool(field.is_repeated)


def _string_check(name: str, lim: limits_pb2.FieldLimits) -> Callable[[str, str], None]:
    bounds = f" (1 to {lim.max_len} characters)" if lim.max_len else ""

    def check(value: str, path: str) -> None:
        if lim.required and not value.strip():
            raise InvalidArgument(f"{path}: must not be empty{bounds}")
        n = len(value)
        if lim.min_len and 0 < n < lim.min_len:
            raise InvalidArgument(f"{path}: {n} characters is under the minimum of {lim.min_len}")
        if lim.max_len and n > lim.max_len:
            raise InvalidArgument(f"{path}: {n} characters is over the limit of {lim.max_len}")

    return check


# The ranges google/protobuf/timestamp.proto and duration.proto define.
_TIMESTAMP_MIN_S, _TIMESTAMP_MAX_S = -62_135_596_800, 253_402_300_799  # 0001-01-01 .. 9999-12-31
_DURATION_MAX_S = 315_576_000_000  # about 10,000 years
_NANOS = 999_999_999


def _range_text(lo: float | None, hi: float | None, unit: str) -> str:
    if lo is not None and hi is not None:
        return f"from {_fmt(lo)} to {_fmt(hi)}{unit}"
    if lo is not None:
        return f"at least {_fmt(lo)}{unit}"
    return f"at most {_fmt(hi or 0)}{unit}"


def _time_check(full_name: str, lim: limits_pb2.FieldLimits) -> Callable[[Message, str], None]:
    """Checks for a Timestamp or Duration: well formed, in its type's range, then in the limits."""
    is_timestamp = full_name == "google.protobuf.Timestamp"
    lo_s, hi_s = (_TIMESTAMP_MIN_S, _TIMESTAMP_MAX_S) if is_timestamp else (-_DURATION_MAX_S, _DURATION_MAX_S)
    lo = lim.min_value if lim.HasField("min_value") else None
    hi = lim.max_value if lim.HasField("max_value") else None
    what = "seconds since 1970-01-01" if is_timestamp else "seconds"

    def check(value: Message, path: str) -> None:
        seconds: int = getattr(value, "seconds")  # noqa: B009 - Timestamp and Duration alike
        nanos: int = getattr(value, "nanos")  # noqa: B009
        if not lo_s <= seconds <= hi_s:
            raise InvalidArgument(
                f"{path}: {seconds} seconds is out of range; use {_range_text(lo_s, hi_s, ' ' + what)}"
            )
        if not (0 if is_timestamp else -_NANOS) <= nanos <= _NANOS:
            raise InvalidArgument(f"{path}.nanos: {nanos} is out of range; use 0 to {_NANOS}")
        if not is_timestamp and seconds and nanos and (seconds < 0) != (nanos < 0):
            raise InvalidArgument(f"{path}: seconds and nanos must have the same sign")
        total = seconds + nanos / 1e9
        if (lo is not None and total < lo) or (hi is not None and total > hi):
            raise InvalidArgument(
                f"{path}: {_fmt(total)} is out of range; use a value {_range_text(lo, hi, ' ' + what)}"
            )

    return check


def _scalar_check(field: FieldDescriptor, lim: limits_pb2.FieldLimits) -> Callable[[Any, str], None]:
    mt = field.message_type
    if mt is not None and mt.full_name in ("google.protobuf.Timestamp", "google.protobuf.Duration"):
        return _time_check(mt.full_name, lim)
    if field.type == FieldDescriptor.TYPE_STRING:
        return _string_check(field.name, lim)
    if field.type == FieldDescriptor.TYPE_ENUM:
        enum = field.enum_type
        assert enum is not None
        names = ", ".join(f"{v.number} ({v.name})" for v in enum.values if v.number != 0)

        def check_enum(value: int, path: str) -> None:
            if lim.defined_only and enum.values_by_number.get(value) is None:
                raise InvalidArgument(f"{path}: unknown value {value}; use one of {names}")
            if lim.required and value == 0:
                raise InvalidArgument(f"{path}: is required; use one of {names}")

        return check_enum
    if field.type in (FieldDescriptor.TYPE_MESSAGE, FieldDescriptor.TYPE_GROUP):

        def check_msg(value: Message, path: str) -> None:
            validate(value, path + ".")

        return check_msg
    has_min, has_max = lim.HasField("min_value"), lim.HasField("max_value")
    lo, hi = lim.min_value, lim.max_value

    def check_number(value: float, path: str) -> None:
        if value != value:  # NaN
            raise InvalidArgument(f"{path}: must be a number")
        if (has_min and value < lo) or (has_max and value > hi):
            rng = (
                f"from {_fmt(lo)} to {_fmt(hi)}"
                if has_min and has_max
                else (f"at least {_fmt(lo)}" if has_min else f"at most {_fmt(hi)}")
            )
            raise InvalidArgument(f"{path}: {_fmt(value)} is out of range; use a value {rng}")
        if lim.required and not value:
            raise InvalidArgument(f"{path}: is required")

    return check_number


def _field_check(field: FieldDescriptor) -> Check | None:
    opts = field.GetOptions()
    lim = opts.Extensions[limits_pb2.limits] if opts.HasExtension(limits_pb2.limits) else None
    is_message = field.type == FieldDescriptor.TYPE_MESSAGE
    if lim is None and not is_message:
        return None
    lim = lim or limits_pb2.FieldLimits()
    name = field.name

    if _is_map(field):
        mt = field.message_type
        assert mt is not None
        value_field = mt.fields_by_name["value"]
        key_lim = limits_pb2.FieldLimits(max_len=lim.max_key_len, required=True)
        val_lim = limits_pb2.FieldLimits(max_len=lim.max_value_len)
        key_check = _string_check("key", key_lim)
        val_check = _string_check("value", val_lim) if value_field.type == FieldDescriptor.TYPE_STRING else None

        def check_map(msg: Message, prefix: str) -> None:
            entries = getattr(msg, name)
            path = prefix + name
            if lim.max_items and len(entries) > lim.max_items:
                raise InvalidArgument(f"{path}: {len(entries)} entries is over the limit of {lim.max_items}")
            for key, value in entries.items():
                key_check(key, f"{path} key {key[:40]!r}")
                if val_check is not None:
                    val_check(value, f"{path}[{key[:40]!r}]")

        return check_map

    item_check = _scalar_check(field, lim)

    if _is_repeated(field):

        def check_repeated(msg: Message, prefix: str) -> None:
            items = getattr(msg, name)
            path = prefix + name
            if lim.required and not items:
                raise InvalidArgument(f"{path}: at least one item is required")
            if lim.max_items and len(items) > lim.max_items:
                raise InvalidArgument(f"{path}: {len(items)} items is over the limit of {lim.max_items}")
            for i, item in enumerate(items):
                item_check(item, f"{path}[{i}]")

        return check_repeated

    has_presence = field.has_presence

    def check_single(msg: Message, prefix: str) -> None:
        path = prefix + name
        if has_presence and not msg.HasField(name):
            if lim.required:
                raise InvalidArgument(f"{path}: is required")
            return
        item_check(getattr(msg, name), path)

    return check_single


@functools.cache
def _checks(descriptor: Descriptor) -> tuple[Check, ...]:
    out = []
    for field in descriptor.fields:
        check = _field_check(field)
        if check is not None:
            out.append(check)
    return tuple(out)


def validate(message: Message, prefix: str = "") -> None:
    """Raise InvalidArgument when `message` breaks a limit declared in its contract."""
    for check in _checks(message.DESCRIPTOR):
        check(message, prefix)
