"""The console's pages over an in-memory view and in-memory stores: numbers, sorting, filters, 400/404 pages."""

from __future__ import annotations

import datetime as dt
import html
import re
from collections.abc import AsyncIterator

import pytest
from aiohttp.test_utils import TestClient, TestServer

from streams.adapters.memory import InMemoryFeatureStore, InMemoryRegistry
from streams.alerts import AlertRules, ScoreView, evaluate_score
from streams.console.server import ConsoleApp
from streams.console.view import ConsoleView, parse_lines_query
from streams.events import AllocationSummary, DeadLetter
from streams.ports import EnterpriseInfo
from streams.settings import Settings
from tests.unit.streams.contracts import NOW, make_line, make_score


def fill(view: ConsoleView, n: int = 120) -> None:
    for i in range(1, n + 1):
        rating = "ABCD"[i % 4]
        amount = 0.0 if rating == "D" else 100_000.0 + 1_000.0 * i
        view.apply_line(make_line(f"E{i}", amount).model_copy(update={"rating": rating,
                                                                      "segment": "steady" if i % 2 else "potential"}))
        view.apply_score(make_score(f"E{i}", rating, 0.05 * (i % 4) + 0.01))
    view.apply_allocation(AllocationSummary(
        allocation_id="alloc-1", as_of=dt.date(2019, 12, 31), budget_yuan=50_000_000.0,
        total_amount_yuan=sum(x.amount_yuan for x in view.lines.values()), expected_profit_yuan=1.0, n_enterprises=n,
        n_lines=sum(1 for x in view.lines.values() if x.amount_yuan > 0), n_changed=n, solver="exact", runtime_s=0.01,
        bundle_version="test", decided_at=NOW))
    view.apply_dead_letter(DeadLetter(reason="json_invalid", error="x", source_topic="invoices", source_partition=0,
                                      source_offset=1, raw_base64="", failed_at=NOW))
    _, alerts = evaluate_score(None, ScoreView("E3", dt.date(2019, 12, 31), "D", 0.9, "E3@x"), rules=AlertRules(),
                               now=NOW)
    for a in alerts:
        view.apply_alert(a)


@pytest.fixture
async def client() -> AsyncIterator[TestClient]:
    features = InMemoryFeatureStore()
    features.apply("E3", "ev1", {"m:201911:amt_out": 12_345_00, "m:201911:n_out": 1, "m:201911:valid_out": 1,
                                 "m:201912:amt_in": 5_000_00, "m:201912:n_in": 1, "m:201912:valid_in": 1})
    features.advance_watermark(dt.date(2019, 12, 20))
    registry = InMemoryRegistry([EnterpriseInfo(f"E{i}", f"Firm {i} Ltd", None) for i in range(1, 121)])
    app = ConsoleApp(Settings(_env_prefix="NOPE_"), stores=lambda: (features, registry), tail=False)
    fill(app.view)
    app._caught_up()  # noqa: SLF001 - no Kafka in a unit test
    async with TestClient(TestServer(app.make_app())) as c:
        yield c


async def test_portfolio_numbers_equal_the_lines(client: TestClient) -> None:
    r = await client.get("/")
    assert r.status == 200
    page = await r.text()
    total = sum(100_000.0 + 1_000.0 * i for i in range(1, 121) if "ABCD"[i % 4] != "D")
    assert re.search(r'id="total-lent">([\d,]+)<', page).group(1) == f"{total:,.0f}"
    assert re.search(r'id="budget">([\d,]+)<', page).group(1) == "50,000,000"
    assert re.search(r'id="dlq-total">(\d+)<', page).group(1) == "1"
    api = await (await client.get("/api/portfolio")).json()
    assert api["total_lent_yuan"] == total and api["n_lines"] == 90


async def test_lines_table_sorts_filters_and_paginates(client: TestClient) -> None:
    api = await (await client.get("/api/lines", params={"sort": "amount", "order": "desc", "size": "10"})).json()
    amounts = [row["amount_yuan"] for row in api["rows"]]
    assert amounts == sorted(amounts, reverse=True) and len(amounts) == 10 and api["total"] == 120
    assert api["pages"] == 12
    api = await (await client.get("/api/lines", params={"rating": "d", "status": "declined"})).json()
    assert api["total"] == 30 and {row["rating"] for row in api["rows"]} == {"D"}
    api = await (await client.get("/api/lines", params={"q": "firm 11", "sort": "enterprise", "order": "asc"})).json()
    assert [row["enterprise_id"] for row in api["rows"]] == ["E11", "E110", "E111", "E112", "E113", "E114", "E115",
                                                             "E116", "E117", "E118", "E119"]
    page = await (await client.get("/lines", params={"page": "2", "size": "50"})).text()
    assert "page 2 of 3" in page and 'rel=next' in page and 'rel=prev' in page


@pytest.mark.parametrize("query, message", [
    ({"sort": "drop table"}, "sort must be one of"),
    ({"page": "abc"}, "page must be a whole number"),
    ({"page": "0"}, "page must be between 1"),
    ({"size": "100000"}, "size must be between 1 and 500"),
    ({"rating": "Z"}, "rating must be one of A, B, C, D"),
    ({"evil": "1"}, "unknown query parameter 'evil'"),
    ({"q": "x" * 500}, "q is too long"),
])
async def test_junk_queries_get_a_400_page(client: TestClient, query: dict[str, str], message: str) -> None:
    r = await client.get("/lines", params=query)
    text = html.unescape(await r.text())
    assert r.status == 400 and message in text and "Traceback" not in text


async def test_enterprise_page_and_its_404_and_400(client: TestClient) -> None:
    r = await client.get("/enterprise/E3")
    text = await r.text()
    assert r.status == 200
    assert "Firm 3 Ltd" in text and 'id=sales-chart' in text and "2019-11 sales: 12,345" in text
    assert 'data-rule="pd_threshold"' in text and 'id=features' in text  # its alert and its features
    r = await client.get("/enterprise/E99999")
    assert r.status == 404 and "unknown enterprise 'E99999'" in html.unescape(await r.text())
    r = await client.get("/enterprise/%7BE1%7D")
    assert r.status == 400 and "not an enterprise id" in await r.text()
    r = await client.get("/no/such/page")
    assert r.status == 404 and "no page at /no/such/page" in await r.text()
    r = await client.post("/lines")
    assert r.status == 405 and "read-only" in await r.text()


async def test_static_assets_come_from_the_package_and_pages_forbid_external_sources(client: TestClient) -> None:
    r = await client.get("/static/console.js")
    assert r.status == 200 and "EventSource" in await r.text()
    r = await client.get("/static/../server.py")
    assert r.status == 404
    r = await client.get("/")
    assert "default-src 'self'" in r.headers["Content-Security-Policy"]
    assert "http://" not in (await r.text()).replace("http://127.0.0.1", "")


async def test_a_foreign_host_header_is_refused_on_loopback(client: TestClient) -> None:
    r = await client.get("/", headers={"Host": "attacker.example:8088"})
    assert r.status == 403 and "loopback only" in await r.text()


def test_lines_query_round_trips_its_parameters() -> None:
    q = parse_lines_query({"rating": "b", "sort": "pd", "order": "asc", "page": "3"})
    assert parse_lines_query(q.params()) == q


@pytest.mark.parametrize("sort", ["amount", "enterprise", "expected_profit", "pd", "rate", "rating", "segment"])
@pytest.mark.parametrize("order", ["asc", "desc"])
def test_numpy_sorting_equals_a_plain_python_sort(sort: str, order: str) -> None:
    view = ConsoleView()
    fill(view, 57)
    attr = {"amount": "amount_yuan", "expected_profit": "expected_profit_yuan", "pd": "default_probability",
            "rate": "rate", "rating": "rating", "segment": "segment"}
    lines = list(view.lines.values())

    def natural(x: object) -> int:
        return int(x.enterprise_id[1:])  # type: ignore[attr-defined]

    if sort == "enterprise":
        want = sorted(lines, key=natural, reverse=order == "desc")
    else:  # by the column, ties by natural id ascending
        primary = sorted(lines, key=natural)
        want = sorted(primary, key=lambda x: getattr(x, attr[sort]), reverse=order == "desc")
    page = view.lines_page(parse_lines_query({"sort": sort, "order": order, "size": "500"}))
    assert [x.enterprise_id for x in page.rows] == [x.enterprise_id for x in want]


def test_an_empty_view_has_an_empty_portfolio_and_table() -> None:
    view = ConsoleView()
    p = view.portfolio()
    assert p.n_enterprises == 0 and p.total_lent_yuan == 0 and [b.key for b in p.by_rating] == list("ABCD")
    assert view.lines_page(parse_lines_query({})).total == 0 and view.segments() == []
