"""The feature fold: idempotent on event id, order-free, void and negative invoices handled."""

from __future__ import annotations

import datetime as dt
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.schema import NUMERIC_FEATURES, SEQUENCE_CHANNELS, SEQUENCE_MONTHS
from streams.events import InvoiceEvent
from streams.features import EnterpriseState, apply_invoice, fold_all, invoice_delta, to_sequence, to_vector

UTC = dt.UTC


def invoice(
    event_id: str,
    day: dt.date,
    amount: str,
    *,
    direction: str = "out",
    status: str = "valid",
    counterparty: str = "B1",
    enterprise: str = "E1",
) -> InvoiceEvent:
    from decimal import Decimal

    a = Decimal(amount)
    tax = (a * Decimal("0.13")).quantize(Decimal("0.01"))
    return InvoiceEvent(
        event_id=event_id,
        enterprise_id=enterprise,
        direction=direction,  # type: ignore[arg-type]
        invoice_no=event_id,
        issue_date=day,
        counterparty_id=counterparty,
        amount=a,
        tax=tax,
        total=a + tax,
        status=status,  # type: ignore[arg-type]
        produced_at=dt.datetime.combine(day, dt.time(12), tzinfo=UTC),
    )


def test_redelivered_event_changes_nothing() -> None:
    ev = invoice("x1", dt.date(2019, 3, 4), "100.00")
    state = apply_invoice(None, ev)
    before = dict(state.counters)
    again = apply_invoice(state, ev)
    assert again is state
    assert state.counters == before
    assert state.n_events == 1


def test_same_invoice_number_with_another_event_id_counts_twice() -> None:
    # The data set has exact duplicate rows: each row is an event with its own id.
    a = invoice("E1-out-7-0", dt.date(2019, 3, 4), "100.00")
    b = invoice("E1-out-7-1", dt.date(2019, 3, 4), "100.00")
    state = fold_all([a, b])["E1"]
    assert state.counters["m:201903:n_out"] == 2
    assert state.counters["m:201903:amt_out"] == 20000


def test_void_invoice_counts_but_adds_no_amount() -> None:
    state = fold_all([invoice("v", dt.date(2019, 3, 4), "500.00", status="void")])["E1"]
    assert state.counters == {"m:201903:n_out": 1, "m:201903:void_out": 1, "s:ncp_out": 1}
    assert state.counterparties == {"cp:out:B1": 1}
    vec = to_vector(state, dt.date(2019, 3, 31))
    assert vec["sales_y0"] == 0.0
    assert vec["n_void"] == 1.0 and vec["void_rate"] == 1.0


def test_negative_invoice_is_a_return_and_reduces_sales() -> None:
    events = [
        invoice("s", dt.date(2019, 3, 4), "1000.00"),
        invoice("r", dt.date(2019, 3, 5), "-250.00"),
    ]
    vec = to_vector(fold_all(events)["E1"], dt.date(2019, 3, 31))
    assert vec["sales_y0"] == pytest.approx(750.0)
    assert vec["n_return_out"] == 1.0
    assert vec["return_rate_out"] == pytest.approx(0.5)
    assert vec["return_amount_share_out"] == pytest.approx(0.25)


def test_state_of_another_enterprise_is_refused() -> None:
    state = apply_invoice(None, invoice("a", dt.date(2019, 1, 1), "1.00"))
    with pytest.raises(ValueError, match="E2"):
        apply_invoice(state, invoice("b", dt.date(2019, 1, 1), "1.00", enterprise="E2"))


def test_hand_computed_growth_and_counterparties() -> None:
    events = [
        invoice("a", dt.date(2018, 2, 1), "100.00"),
        invoice("b", dt.date(2019, 2, 1), "300.00", counterparty="B2"),
        invoice("c", dt.date(2019, 2, 1), "100.00", direction="in", counterparty="S1"),
    ]
    vec = to_vector(fold_all(events)["E1"], dt.date(2019, 6, 30))
    assert vec["sales_y0"] == 300.0
    assert vec["sales_growth"] == pytest.approx(2.0)
    assert vec["cost_y0"] == 100.0
    assert vec["profit_y0"] == 200.0
    assert math.isnan(vec["cost_growth"])  # no purchases the year before: undefined, not zero
    assert vec["n_buyers"] == 2.0 and vec["n_sellers"] == 1.0
    assert vec["top_buyer_share"] == pytest.approx(0.75)
    assert vec["months_since_first"] == 16.0 and vec["months_since_last"] == 4.0
    assert list(vec) == list(NUMERIC_FEATURES)


def test_months_after_as_of_are_ignored() -> None:
    early = [invoice("a", dt.date(2019, 1, 10), "100.00")]
    late = [*early, invoice("b", dt.date(2019, 5, 10), "900.00", counterparty="B1")]
    as_of = dt.date(2019, 2, 28)
    v_early = to_vector(fold_all(early)["E1"], as_of)
    v_late = to_vector(fold_all(late)["E1"], as_of)
    for name in ("sales_y0", "n_valid", "n_invoices", "months_since_last", "sales_cv_12m"):
        assert v_early[name] == v_late[name], name


def test_sequence_shape_and_channels() -> None:
    events = [invoice(f"e{i}", dt.date(2019, m, 3), "10.00") for i, m in enumerate(range(1, 13))]
    seq = to_sequence(fold_all(events)["E1"], dt.date(2019, 12, 31))
    assert seq.shape == (len(SEQUENCE_CHANNELS), SEQUENCE_MONTHS)
    assert seq.dtype == np.float32
    log_n_out = seq[SEQUENCE_CHANNELS.index("log_n_out")]
    assert np.allclose(log_n_out[-12:], np.log1p(1.0)) and np.all(log_n_out[:-12] == 0)


def test_empty_state_gives_nan_rates_not_errors() -> None:
    vec = to_vector(EnterpriseState("E9"), dt.date(2019, 1, 1))
    assert vec["n_invoices"] == 0.0
    assert math.isnan(vec["void_rate"]) and math.isnan(vec["months_since_first"])


_amounts = st.integers(min_value=-50_000, max_value=500_000).map(lambda c: f"{c / 100:.2f}")
_days = st.dates(min_value=dt.date(2017, 1, 1), max_value=dt.date(2019, 12, 31))
_events = st.lists(
    st.tuples(_days, _amounts, st.sampled_from(["in", "out"]), st.sampled_from(["valid", "void"]), st.sampled_from(["B1", "B2", "S1"])),
    min_size=1,
    max_size=30,
)


@settings(max_examples=60, deadline=None)
@given(rows=_events, seed=st.integers(0, 2**32 - 1), redeliver=st.integers(0, 10))
def test_fold_is_order_free_and_idempotent(rows: list[tuple[dt.date, str, str, str, str]], seed: int, redeliver: int) -> None:
    events = [invoice(f"id{i}", d, a, direction=dr, status=s, counterparty=c) for i, (d, a, dr, s, c) in enumerate(rows)]
    reference = fold_all(events)["E1"]
    rng = np.random.default_rng(seed)
    shuffled = [events[i] for i in rng.permutation(len(events))]
    replayed = shuffled + [events[i] for i in rng.integers(0, len(events), size=redeliver)]
    other = fold_all(replayed)["E1"]
    assert other.counters == reference.counters
    assert other.counterparties == reference.counterparties
    assert other.seen == reference.seen
    as_of = dt.date(2019, 12, 31)
    a, b = to_vector(reference, as_of), to_vector(other, as_of)
    assert all((math.isnan(a[k]) and math.isnan(b[k])) or a[k] == b[k] for k in a)


def test_delta_has_no_zero_increments() -> None:
    delta = invoice_delta(invoice("z", dt.date(2019, 1, 1), "0.00"))
    assert all(v != 0 for v in delta.values())
    assert delta["m:201901:n_out"] == 1
