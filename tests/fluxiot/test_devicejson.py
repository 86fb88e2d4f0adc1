import pytest

from fluxiot import devicejson


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (
            b'{"t": 21.5, "on": true, "mode": "eco", "pos": {"x": [1, 2]}}',
            {"t": 21.5, "on": True, "mode": "eco", "pos": {"x": [1, 2]}},
        ),
        (b'\xef\xbb\xbf{"t": 1}', {"t": 1}),  # a UTF-8 byte order mark, as some device SDKs send
        (b'{"path": "C:\\\\u0000dir"}', {"path": "C:\\u0000dir"}),  # an escaped backslash, not a NUL
        (b"[1, 2]", [1, 2]),
    ],
)
def test_device_json_that_is_kept(payload, expected):
    assert devicejson.loads(payload) == expected


@pytest.mark.parametrize(
    "payload",
    [
        b'{"t": NaN}',
        b'{"t": Infinity}',
        b'{"t": 1e400}',  # overflows to infinity
        b'{"t": "\\ud800"}',  # a lone surrogate: no UTF-8 for it
        b'{"t": "\xff"}',  # invalid UTF-8
        b"{not json",
        b"",
    ],
)
def test_what_is_not_json_is_refused(payload):
    with pytest.raises(ValueError) as caught:
        devicejson.loads(payload)
    assert not isinstance(caught.value, devicejson.UnstorableJSON)


@pytest.mark.parametrize(
    "payload",
    [b'{"t": "a\\u0000b"}', b'{"t": {"deep": ["\\u0000"]}}', b'{"t": {"k\\u0000": 1}}'],
)
def test_a_nul_character_anywhere_is_refused_as_unstorable(payload):
    with pytest.raises(devicejson.UnstorableJSON):
        devicejson.loads(payload)


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("ok", ""),
        ({"a": [1, 2.5, {"b": "c"}]}, ""),
        ("a\x00", "NUL"),
        ({"k\x00": 1}, "NUL"),
        ([1.0, float("inf")], "not a finite number"),
        ({"a": {"b": float("nan")}}, "not a finite number"),
    ],
)
def test_unstorable_values_are_named(value, problem):
    found = devicejson.unstorable(value)
    assert (problem in found) if problem else found == ""
