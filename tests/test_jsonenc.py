"""The hot path's shortcuts render and fingerprint exactly as the general functions do:
`render_data` byte for byte as `render`, `payload_fingerprint` as `request_fingerprint` of the
rendered body (a batch item's key must replay the single charge sent with the same key)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import simplejson
from hypothesis import given
from hypothesis import strategies as st

from billfold.application.idempotent import (
    _canonical,
    _canonical_text,
    payload_fingerprint,
    request_fingerprint,
)
from billfold.jsonenc import render, render_data

texts = st.text()  # every code point, control characters and lone surrogates included
decimals = st.decimals(allow_nan=False, allow_infinity=False)
times = st.datetimes(timezones=st.sampled_from([UTC, timezone(timedelta(hours=-5))]))
scalars = st.one_of(st.none(), st.booleans(), st.integers(), decimals, texts, times)


@given(st.dictionaries(texts, scalars, max_size=8))
def test_render_data_is_render_of_the_envelope(data: dict[str, Any]) -> None:
    assert render_data(data) == render({"data": data})


@given(
    st.dictionaries(
        texts,
        st.one_of(
            scalars, st.lists(st.integers()), st.floats(allow_nan=False, allow_infinity=False)
        ),
    )
)
def test_render_data_of_anything_else_is_still_render(data: dict[str, Any]) -> None:
    assert render_data(data) == render({"data": data})


def test_equal_instants_in_other_zones_render_as_their_own_time() -> None:
    at = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
    elsewhere = at.astimezone(timezone(timedelta(hours=-5)))
    assert at == elsewhere
    assert render_data({"t": at}) == b'{"data": {"t": "2026-12-06T12:00:00Z"}}'
    assert render_data({"t": elsewhere}) == b'{"data": {"t": "2026-12-06T07:00:00-05:00"}}'
    assert render({"t": elsewhere}) == b'{"t": "2026-12-06T07:00:00-05:00"}'


json_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.floats(allow_nan=False, allow_infinity=False),
        decimals,  # as the API parses a number (parse_float=Decimal)
        texts,
    ),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(texts, inner, max_size=4)),
    max_leaves=20,
)


@given(st.dictionaries(texts, json_values, max_size=6))
def test_payload_fingerprint_is_the_rendered_bodys(payload: dict[str, Any]) -> None:
    path = "/api/admin/v1/usage-charges"
    assert payload_fingerprint("POST", path, "", payload) == request_fingerprint(
        "POST", path, "", render(payload)
    )


def test_payload_fingerprint_counts_numbers_by_value() -> None:
    path = "/api/admin/v1/usage-charges"
    sent = json.loads('{"amount": 0.10, "n": 1}')
    same = json.loads('{"n": 1.0, "amount": 0.1}')
    other = json.loads('{"amount": 0.11, "n": 1}')
    assert payload_fingerprint("POST", path, "", sent) == payload_fingerprint(
        "POST", path, "", same
    )
    assert payload_fingerprint("POST", path, "", sent) != payload_fingerprint(
        "POST", path, "", other
    )
    # As the request with that body would have it.
    assert payload_fingerprint("POST", path, "", sent) == request_fingerprint(
        "POST", path, "", b'{"n": 1, "amount": 0.1000}'
    )


@given(st.dictionaries(texts, st.one_of(st.none(), st.booleans(), decimals, texts, json_values)))
def test_the_canonical_text_is_the_encoders(payload: dict[str, Any]) -> None:
    """The fingerprint's own writer of flat objects writes what simplejson writes."""
    canonical = _canonical(payload)
    expected = simplejson.dumps(canonical, sort_keys=True, separators=(",", ":"), use_decimal=True)
    assert _canonical_text(canonical) == expected.encode()
