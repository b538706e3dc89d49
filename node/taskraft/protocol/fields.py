"""Reading the fields of a decoded msgpack map without trusting its types.

A peer may send any msgpack value where we expect an integer, and Python would happily let a
bool pass for an int or a float for a count. Every field of every message is read through this
module, which checks the exact type and the range and names the field in the error, as in
`args.delay_ms: must be between 0 and 2592000000, got -5`. Which error class a range violation
raises is the caller's choice, so that a too-large payload reads as `payload_too_large` and a
negative delay as `invalid_argument`, while a wrong type is always `bad_request`.
"""

from __future__ import annotations

from typing import Final

from taskraft.errors import BadRequest, TaskraftError

_WIRE_TYPE_NAMES: Final[dict[type, str]] = {
    bool: "bool",
    int: "int",
    float: "float",
    str: "str",
    bytes: "bin",
    list: "array",
    tuple: "array",
    dict: "map",
}


class _Missing:
    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Final = _Missing()


def wire_type_name(value: object) -> str:
    """The msgpack name of a decoded value's type, for error messages read in any language."""
    if value is None:
        return "nil"
    return _WIRE_TYPE_NAMES.get(type(value), type(value).__name__)


def shorten(text: str, limit: int = 64) -> str:
    """A peer-supplied string quoted for an error message, cut so the message stays small."""
    if len(text) <= limit:
        return repr(text)
    return repr(text[:limit]) + f"... ({len(text)} characters)"


def child_path(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def wrong_type(path: str, expected: str, value: object) -> BadRequest:
    return BadRequest(f"{path}: expected {expected}, got {wire_type_name(value)}")


def check_integer(
    value: object,
    path: str,
    *,
    low: int,
    high: int,
    range_error: type[TaskraftError] = BadRequest,
) -> int:
    """`value` as an int in [low, high]; bools are not integers on the wire."""
    if type(value) is not int:
        raise wrong_type(path, "int", value)
    if not low <= value <= high:
        raise range_error(f"{path}: must be between {low} and {high}, got {value}")
    return value


def check_text(
    value: object,
    path: str,
    *,
    max_bytes: int,
    min_chars: int = 0,
    length_error: type[TaskraftError] = BadRequest,
) -> str:
    """`value` as a str of at least `min_chars` characters and at most `max_bytes` of UTF-8."""
    if type(value) is not str:
        raise wrong_type(path, "str", value)
    # A character is at least one byte, so a long string is refused before it is encoded.
    if len(value) > max_bytes or len(value.encode("utf-8", "surrogatepass")) > max_bytes:
        raise length_error(f"{path}: must be at most {max_bytes} bytes of UTF-8")
    if len(value) < min_chars:
        raise length_error(f"{path}: must be at least {min_chars} characters")
    return value


def check_bool(value: object, path: str) -> bool:
    if type(value) is not bool:
        raise wrong_type(path, "bool", value)
    return value


def check_binary(
    value: object,
    path: str,
    *,
    max_bytes: int,
    length_error: type[TaskraftError] = BadRequest,
) -> bytes:
    if type(value) is not bytes:
        raise wrong_type(path, "bin", value)
    if len(value) > max_bytes:
        raise length_error(f"{path}: {len(value)} bytes exceed the maximum of {max_bytes}")
    return value


def check_array(value: object, path: str, *, length: int | None = None) -> list[object]:
    if type(value) is not list:
        raise wrong_type(path, "array", value)
    if length is not None and len(value) != length:
        raise BadRequest(f"{path}: expected an array of {length} items, got {len(value)}")
    return value


class FieldReader:
    """Reads the fields of one map, remembering which were read so extras can be refused.

    Requests are strict: `finish()` refuses any field the operation does not define, so a typo
    in an optional argument is an error rather than a silently ignored setting. Answers are
    read without `finish()`, so a newer server may add fields that older clients ignore.
    """

    __slots__ = ("_fields", "_path", "_read")

    def __init__(self, value: object, path: str) -> None:
        if type(value) is not dict:
            raise wrong_type(path or "message", "map", value)
        self._fields: dict[str, object] = value
        self._path = path
        self._read: set[str] = set()

    @property
    def path(self) -> str:
        return self._path

    def path_of(self, name: str) -> str:
        return child_path(self._path, name)

    def take(self, name: str) -> object:
        """The raw value of a field, or MISSING when absent."""
        self._read.add(name)
        return self._fields.get(name, MISSING)

    def required(self, name: str) -> object:
        value = self.take(name)
        if value is MISSING:
            raise BadRequest(f"{self.path_of(name)}: missing")
        return value

    def optional(self, name: str) -> object:
        """The value of an optional field; absent and nil both read as None."""
        value = self.take(name)
        return None if value is MISSING else value

    def integer(
        self, name: str, *, low: int, high: int, range_error: type[TaskraftError] = BadRequest
    ) -> int:
        value = self.required(name)
        return check_integer(value, self.path_of(name), low=low, high=high, range_error=range_error)

    def optional_integer(
        self, name: str, *, low: int, high: int, range_error: type[TaskraftError] = BadRequest
    ) -> int | None:
        value = self.optional(name)
        if value is None:
            return None
        return check_integer(value, self.path_of(name), low=low, high=high, range_error=range_error)

    def integer_or_default(
        self,
        name: str,
        *,
        default: int,
        low: int,
        high: int,
        range_error: type[TaskraftError] = BadRequest,
    ) -> int:
        """An optional integer; absent or nil reads as `default`."""
        value = self.optional_integer(name, low=low, high=high, range_error=range_error)
        return default if value is None else value

    def text(
        self,
        name: str,
        *,
        max_bytes: int,
        min_chars: int = 0,
        length_error: type[TaskraftError] = BadRequest,
    ) -> str:
        return check_text(
            self.required(name),
            self.path_of(name),
            max_bytes=max_bytes,
            min_chars=min_chars,
            length_error=length_error,
        )

    def optional_text(
        self,
        name: str,
        *,
        max_bytes: int,
        min_chars: int = 0,
        length_error: type[TaskraftError] = BadRequest,
    ) -> str | None:
        value = self.optional(name)
        if value is None:
            return None
        return check_text(
            value,
            self.path_of(name),
            max_bytes=max_bytes,
            min_chars=min_chars,
            length_error=length_error,
        )

    def boolean(self, name: str) -> bool:
        return check_bool(self.required(name), self.path_of(name))

    def binary(
        self, name: str, *, max_bytes: int, length_error: type[TaskraftError] = BadRequest
    ) -> bytes:
        return check_binary(
            self.required(name), self.path_of(name), max_bytes=max_bytes, length_error=length_error
        )

    def array(self, name: str, *, length: int | None = None) -> list[object]:
        return check_array(self.required(name), self.path_of(name), length=length)

    def map(self, name: str) -> FieldReader:
        return FieldReader(self.required(name), self.path_of(name))

    def finish(self) -> None:
        """Refuse the fields nobody read: the message defines no such field."""
        extra = sorted(set(self._fields) - self._read)
        if not extra:
            return
        first = extra[0] if len(extra[0]) <= 64 else shorten(extra[0])
        others = f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""
        raise BadRequest(f"{self.path_of(first)}: unexpected field{others}")
