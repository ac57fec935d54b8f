"""D7/D8: property tests for the parsers and normalisers beyond ``select.answers`` (its own are in
test_answers.py, the critic parser's in test_critic.py): whatever the input, no exception but the
documented one, and every normaliser is idempotent.

Parsers: the PRM spec, ``VLMEVAL_PRM_OPTIONS``, store lines (``records.from_json``, ``read_records``),
the ``extra_records`` summary; normalisers: ``split_steps``, ``canonical_number``, ``well_formed``.
"""

import json
import math

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from vlmeval_prm.constants import OPTIONS_ENV, STEP_SEPARATOR
from vlmeval_prm.host import plugin
from vlmeval_prm.prm import parse_spec
from vlmeval_prm.select.answers import answer_segment, canonical_number
from vlmeval_prm.steps import split_steps
from vlmeval_prm.store.jsonl import encode, read_records, well_formed
from vlmeval_prm.store.records import (
    RECORD_TYPES,
    CandidateRecord,
    SampleRecord,
    ScoreRecord,
    StoreError,
    Summary,
    from_json,
)

SETTINGS = settings(max_examples=300, deadline=None)
#: Text with what breaks naive code: lone surrogates, blank lines of odd whitespace, CR, NUL.
TEXT = st.text(
    alphabet=st.one_of(
        st.characters(),
        st.sampled_from(["\n", "\r", " ", "\t", "\u00a0", "\ud800", "\udfff", "\x00", "\x85", "\u2028"]),
    )
)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
    max_leaves=12,
)
FIELDS = [
    "key",
    "i",
    "prm",
    "mode",
    "text",
    "error",
    "steps",
    "step_scores",
    "bounds",
    "meta",
    "retry",
    "v",
    "dataset",
    "question",
    "images",
    "n",
    "settings",
    "policy",
    "response_score",
]
#: Store-line-shaped objects: a known kind, the required fields, anything in them.
LINES = st.builds(
    lambda kind, key, fields: {"kind": kind, "key": key, **fields},
    st.sampled_from(sorted(RECORD_TYPES)),
    st.one_of(TEXT, JSON),
    st.dictionaries(st.sampled_from(FIELDS), JSON, max_size=8),
)


@SETTINGS
@given(TEXT, st.integers(1, 14))
def test_split_steps_is_total_and_idempotent(text, max_steps):
    steps = split_steps(text, max_steps)
    assert all(s and s == s.strip() for s in steps) and len(steps) <= max_steps
    assert split_steps(STEP_SEPARATOR.join(steps), max_steps) == steps


@SETTINGS
@given(
    st.one_of(
        TEXT,
        st.from_regex(r"[-+]?\d{0,30}(\.\d{0,30})?([eE][-+]?\d{1,9})?%?", fullmatch=True),
        st.from_regex(r"[-+]?\d{1,9}\s*/\s*\d{1,9}", fullmatch=True),
    ),
    st.one_of(st.none(), st.integers(-3, 60)),
)
def test_canonical_number_is_total_and_idempotent(raw, precision):
    number = canonical_number(raw, precision)
    assert number is None or canonical_number(number, precision) == number


@SETTINGS
@given(TEXT)
def test_answer_segment_is_total(text):
    segment = answer_segment(text)
    assert segment is None or segment in text


@SETTINGS
@given(TEXT)
def test_well_formed_is_utf8_idempotent_and_keeps_good_text(text):
    out = well_formed(text)
    out.encode("utf-8")
    assert well_formed(out) == out and len(out) <= len(text)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return
    assert out == text


@SETTINGS
@given(TEXT, st.one_of(st.none(), TEXT), st.dictionaries(TEXT, TEXT, max_size=3))
def test_every_text_survives_a_store_round_trip(text, error, settings_):
    """D2: a lone surrogate must not stop the append; it reads back exactly."""
    for record in (
        CandidateRecord(key=text or "k", i=3, text=text, error=error, settings=settings_),
        SampleRecord(key="k", question=text, images=[text]),
        ScoreRecord(key="k", i=0, prm=text, steps=[text], step_scores=[0.5], error=error),
    ):
        line = encode(record)
        assert line.endswith(b"\n") and line.count(b"\n") == 1
        assert from_json(json.loads(line)) == record


@SETTINGS
@given(st.one_of(JSON, LINES))
def test_a_store_line_parses_to_a_sound_record_or_nothing(obj):
    """Whatever a line holds, the reader yields a record every reader can use, None, or StoreError
    (a newer schema version), never another exception later in selection or the report."""
    try:
        rec = from_json(obj)
    except StoreError:
        return
    if isinstance(rec, ScoreRecord):
        assert rec.usable in (True, False)
        scores, reason = rec.scores, rec.unscored_reason
        assert (scores is None) == (reason is not None)
        assert scores is None or all(math.isfinite(s) for s in scores)
        assert isinstance(rec.steps, list) and isinstance(rec.retry, bool)
    if isinstance(rec, CandidateRecord):
        assert rec.text is None or isinstance(rec.text, str)
        assert isinstance(rec.i, int)


@SETTINGS
@given(
    st.lists(
        st.one_of(
            st.binary(max_size=40),
            LINES.map(lambda o: json.dumps(o).encode()),
            JSON.map(lambda o: json.dumps(o).encode()),
        ),
        max_size=6,
    )
)
def test_read_records_survives_any_file(tmp_path_factory, lines):
    path = tmp_path_factory.mktemp("store") / "s.jsonl"
    path.write_bytes(b"\n".join(lines))
    try:
        for rec in read_records(str(path)):
            assert rec.kind in RECORD_TYPES
    except StoreError:
        pass


@SETTINGS
@given(
    st.one_of(
        TEXT,
        JSON.map(json.dumps),
        st.dictionaries(
            st.sampled_from(["key", "n", "chosen", "scores", "tied", "failures", "v", "unscored", "duplicates", "prm"]),
            JSON,
        ).map(json.dumps),
    )
)
def test_a_summary_parses_or_is_none(raw):
    try:
        summary = Summary.from_json(raw)
    except StoreError:
        return
    if summary is not None:
        assert isinstance(summary.n, int) and isinstance(summary.key, str)
        assert all(s is None or math.isfinite(s) for s in summary.scores)
        assert summary.chosen is None or isinstance(summary.chosen, int)


@SETTINGS
@given(TEXT)
def test_prm_spec_parses_or_says_why(spec):
    try:
        backend, target = parse_spec(spec)
    except ValueError as exc:
        assert repr(spec) in str(exc)
    else:
        assert backend in ("transformers", "lmdeploy", "vllm") and isinstance(target, str)


#: What an environment variable can hold (no NUL, no lone surrogate).
ENV_TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"))


@SETTINGS
@given(
    st.one_of(
        ENV_TEXT,
        JSON.map(json.dumps),
        st.dictionaries(
            st.sampled_from(list(plugin.BON_OPTIONS) + list(plugin.RESERVED_OPTIONS) + ["temprature", "x"]), JSON
        ).map(json.dumps),
    )
)
def test_options_parse_or_name_the_variable(monkeypatch_module, raw):
    monkeypatch_module.setenv(OPTIONS_ENV, raw)
    try:
        opts = plugin.bon_options()
    except plugin.OptionsError as exc:
        assert str(exc).startswith(OPTIONS_ENV)
    else:
        assert isinstance(opts, dict) and set(opts) <= set(plugin.BON_OPTIONS)


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


@SETTINGS
@given(st.lists(st.tuples(st.sampled_from(["text", "image"]), TEXT), max_size=3), st.one_of(st.none(), TEXT))
@example([("image", "a\x00b"), ("image", "\ud800.png"), ("text", "x \ud800")], "\udfff")
def test_sample_key_is_total_and_stable(parts, dataset):
    """D2: a lone surrogate in a question must not stop BestOfN before anything is stored."""
    from vlmeval_prm.host.bon import sample_key

    message = [{"type": t, "value": v} for t, v in parts]
    key = sample_key(dataset, message)
    assert len(key) == 24 and key == sample_key(dataset, [dict(m) for m in message])
