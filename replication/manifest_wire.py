"""The replica's manifest answer on the wire, written and read a slice at a time.

The answer is one JSON object, `{"entries": [[path, type, mode, mtime_ns, size, target], ...]}`,
byte for byte what every release has sent (so either side may be of the previous release). For
100,000 files that is about 7 MiB of text and, built or parsed whole, some 40 MiB of Python lists
on each node: the replica now writes it in slices as its walk goes, and the leader reads it one
entry at a time (issue 15: peak RSS under 100 MiB).

Reading knows nothing of what an entry means: peer_answers.ManifestAnswer checks each one.
"""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import Generator, Iterable
from typing import Any

KEY = "entries"
OPEN = b'{"entries": ['
CLOSE = b"]}"
SLICE = 2000
"""Entries per written piece: about 150 KiB of text, one thread hop on the replica each."""
MAX_ELEMENT_CHARS = 64 * 1024
"""Longest text of one element (or of any other value, or a key): an honest entry is a path and a
target of at most 4 KiB each, even \\u-escaped well under this."""

RETRY_CHARS = 4096
"""An incomplete value is tried again with at least this much text (and at least twice as much)."""
MAX_BATCH_CHARS = 1 << 20
"""At most this much text is parsed in one call (what it becomes is held until the caller took it)."""
_SEPARATOR = "], ["
_WS = re.compile(r"[ \t\n\r]*")
_DECODER = json.JSONDecoder()


def pieces(entries: Iterable[list[Any]], per_piece: int = SLICE) -> Generator[bytes, None, None]:
    """The answer for `entries`, in pieces; joined they equal `json.dumps({"entries": [...]})`."""
    prefix = OPEN
    batch: list[list[Any]] = []
    for entry in entries:
        batch.append(entry)
        if len(batch) >= per_piece:
            yield prefix + json.dumps(batch)[1:-1].encode()
            prefix, batch = b", ", []
    if batch:
        yield prefix + json.dumps(batch)[1:-1].encode()
        prefix = b", "
    yield (OPEN if prefix == OPEN else b"") + CLOSE


class WireError(ValueError):
    """The answer is not a manifest: `reason` is the refusal it is counted as."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class EntriesReader:
    """Reads `{"entries": [element, ...]}` from pieces of bytes; `feed` returns the elements completed.

    Any JSON object is accepted whose `entries` member is a list, with other members (each at most
    MAX_ELEMENT_CHARS of text) skipped; the same document `json.loads` would refuse is refused here,
    and so are a second `entries` and an element longer than MAX_ELEMENT_CHARS (WireError). Nothing
    but the text of an element not complete yet is held. The caller bounds the bytes in all.
    """

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")("surrogatepass")
        self._text = ""
        self._pos = 0
        self._incoming: list[str] = []
        self._waiting = 0
        """Characters in `_incoming`, not yet joined to `_text`."""
        self._state = self._start
        self._key: str | None = None
        self._found = False
        self._final = False
        self._out: list[Any] = []
        self._retry_at = 0
        """A value that did not parse yet is tried again once this much text follows its start."""

    def feed(self, chunk: bytes) -> list[Any]:
        try:
            text = self._decoder.decode(chunk)
        except UnicodeDecodeError as exc:
            raise WireError("malformed", "the answer is not UTF-8") from exc
        self._incoming.append(text)
        self._waiting += len(text)
        if len(self._text) - self._pos + self._waiting < self._retry_at:
            return []  # joined once there is enough to try again: small pieces cost no copy each
        self._take_incoming()
        return self._run()

    def _take_incoming(self) -> None:
        self._text = "".join([self._text[self._pos :], *self._incoming])
        self._pos = 0
        self._incoming, self._waiting = [], 0

    def close(self) -> list[Any]:
        """The last elements; WireError unless the document ended complete, with its list of entries."""
        try:
            self._incoming.append(self._decoder.decode(b"", final=True))
        except UnicodeDecodeError as exc:
            raise WireError("malformed", "the answer is not UTF-8") from exc
        self._take_incoming()
        self._final = True
        found = self._run()
        if self._state != self._end or not self._found:
            raise WireError("malformed", "the answer ended early" if self._found else f"{KEY} must be a list")
        return found

    # -- the states: each consumes what it can and returns False to wait for more text -------------
    def _run(self) -> list[Any]:
        while self._state():
            pass
        found, self._out = self._out, []
        return found

    def _start(self) -> bool:
        return self._expect({"{": self._first_key})

    def _first_key(self) -> bool:
        if self._peek() == "}":
            self._pos += 1
            self._state = self._end
            return True
        return self._member_key()

    def _member_key(self) -> bool:
        if self._peek() not in ('"', None):
            raise self._malformed()
        key = self._value()
        if key is _MORE:
            return False
        self._key = key
        self._state = self._colon
        return True

    def _colon(self) -> bool:
        return self._expect({":": self._member_value})

    def _member_value(self) -> bool:
        if self._key != KEY:
            if self._value() is _MORE:
                return False
            self._state = self._after_member
            return True
        if self._found:
            raise WireError("malformed", f"{KEY} given twice")
        char = self._peek()
        if char is None:
            return False
        if char != "[":
            raise WireError("malformed", f"{KEY} must be a list")
        self._found = True
        self._pos += 1
        self._state = self._first_element
        return True

    def _first_element(self) -> bool:
        char = self._peek()
        if char is None:
            return False
        if char == "]":
            self._pos += 1
            self._state = self._after_member
            return True
        self._state = self._element
        return True

    def _element(self) -> bool:
        if self._elements_up_to_last():
            return True
        value = self._value()
        if value is _MORE:
            return False
        self._out.append(value)
        self._state = self._next_element
        return True

    def _elements_up_to_last(self) -> bool:
        """Every element up to the last `], [` in the text, in one `json.loads` (5x faster than one
        by one). A cut that falls inside a string, or below the element level, leaves a text that
        does not parse (JSON is read left to right): then the elements are read one by one."""
        cut = self._text.rfind(_SEPARATOR, self._pos, self._pos + MAX_BATCH_CHARS)
        if cut <= self._pos:
            return False
        try:
            values = json.loads(f"[{self._text[self._pos : cut + 1]}]")
        except (ValueError, RecursionError):
            return False
        self._out.extend(values)
        self._pos = cut + 1
        self._state = self._next_element
        return True

    def _next_element(self) -> bool:
        return self._expect({",": self._element, "]": self._after_member})

    def _after_member(self) -> bool:
        return self._expect({",": self._member_key, "}": self._end})

    def _end(self) -> bool:
        if self._peek() is not None:
            raise WireError("malformed", "text after the end of the answer")
        return False

    # -- helpers -----------------------------------------------------------------------------------
    def _peek(self) -> str | None:
        """The next character after whitespace, or None when the text so far ends first."""
        self._pos = _WS.match(self._text, self._pos).end()  # type: ignore[union-attr]  # always matches
        return self._text[self._pos] if self._pos < len(self._text) else None

    def _expect(self, then: dict[str, Any]) -> bool:
        """Step over the next character, one of `then`'s keys, into the state it maps to."""
        found = self._peek()
        if found is None:
            return False
        if found not in then:
            raise self._malformed()
        self._pos += 1
        self._state = then[found]
        return True

    def _value(self) -> Any:
        """The JSON value at the current position, or _MORE while it may still be incomplete."""
        if self._peek() is None:
            return _MORE
        pending = len(self._text) - self._pos
        if not self._final and pending < self._retry_at:
            return _MORE  # tried on less text: wait until there is twice as much (linear, not quadratic)
        try:
            value, end = _DECODER.raw_decode(self._text, self._pos)
        except (ValueError, RecursionError):
            if self._final or pending > MAX_ELEMENT_CHARS:
                raise self._malformed() from None
            self._retry_at = max(2 * pending, RETRY_CHARS)
            return _MORE
        self._retry_at = 0
        if end - self._pos > MAX_ELEMENT_CHARS:
            raise WireError("malformed", f"a value over {MAX_ELEMENT_CHARS} characters")
        if end == len(self._text) and not self._final and _may_go_on(value):
            self._retry_at = pending + 1
            return _MORE  # "12" may be the start of "123"
        self._pos = end
        return value

    def _malformed(self) -> WireError:
        return WireError("malformed", f"not a JSON object with a list of {KEY} (at character {self._pos})")


_MORE = object()


def _may_go_on(value: object) -> bool:
    """A number ending where the text ends may continue in the next piece; every other value is closed."""
    return isinstance(value, int | float) and not isinstance(value, bool)
