"""``riskmon console``: a read-only aiohttp web app over the live state (Kafka topics and Redis).

What it reads, and how:

- **Kafka** (aiokafka, no consumer group, every partition from the beginning): ``credit-lines``
  and ``enterprise-scores`` (compacted: the current line and score of every enterprise, and
  what is left of their history), ``credit-allocations`` (allocation history),
  ``risk-alerts`` (the alerts feed) and ``invoices.dlq`` (dead-letter counts by reason).
  They are folded into a :class:`~streams.console.view.ConsoleView` in memory; new alerts
  are pushed to the browsers over server-sent events (``GET /events/alerts``).
- **Redis** (the worker's stores): enterprise names (registry), the feature counters and
  the watermark, for the enterprise page's monthly chart and feature table.

Every page is GET only and the app binds to loopback by default. When bound to loopback it
also refuses requests whose ``Host`` header is not a loopback name (a DNS-rebinding guard).
A service that is down shows as a banner on the pages, never as an error: the console keeps
serving what it has. Unknown enterprises get a 404 page, junk queries a 400 page, and
anything unexpected a one-line 500 page (the traceback goes to the log only).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ipaddress
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from importlib import resources
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ValidationError

from streams.console import render
from streams.console.view import BadQuery, ConsoleView, parse_enterprise_id, parse_lines_query
from streams.events import AllocationSummary, CreditLine, DeadLetter, EnterpriseScore, RiskAlert
from streams.ports import EnterpriseRegistry, FeatureStore
from streams.settings import Settings

log = logging.getLogger("riskmon.console")

Stores = tuple[FeatureStore, EnterpriseRegistry]
STATIC = resources.files("streams.console") / "static"
_LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1", "[::1]"}
_NAMES_TTL_S = 30.0


def is_loopback(host: str) -> bool:
    """True for a loopback address or ``localhost``.

    Examples
    --------
    >>> is_loopback("127.0.0.1"), is_loopback("localhost"), is_loopback("0.0.0.0"), is_loopback("example.org")
    (True, True, False, False)
    """
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass
class FeedStatus:
    """How the Kafka side is doing (shown as a banner and on ``/health``)."""

    state: str = "starting"  # starting | waiting_for_topics | catching_up | live | kafka_unavailable
    detail: str = ""
    records: int = 0
    undecodable: int = 0
    caught_up_at: float | None = None
    missing_topics: list[str] = field(default_factory=list)


class ConsoleApp:
    """The console: the view, its Kafka tail, the Redis reads and the HTTP routes."""

    def __init__(self, settings: Settings, *, stores: Callable[[], Stores] | None = None, tail: bool = True) -> None:
        """``stores`` returns the feature store and the registry to read (default: the worker's Redis stores;
        called once per read, so a registry cache never goes stale); ``tail=False`` reads no Kafka (tests)."""
        self.settings = settings
        self._stores_factory = stores or self._redis_stores
        self._tail_enabled = tail
        self.view = ConsoleView()
        self.status = FeedStatus()
        self._subscribers: set[asyncio.Queue[RiskAlert]] = set()
        self._stopping = asyncio.Event()
        self._tail_task: asyncio.Task[None] | None = None
        self._redis: Any | None = None
        self._names: dict[str, str] = {}
        self._names_at = 0.0
        self._redis_error = ""

    # ----------------------------------------------------------------- Kafka

    def _topics(self) -> dict[str, Callable[[bytes], None]]:
        t = self.settings.topics
        return {t.credit_lines: lambda raw: self.view.apply_line(CreditLine.model_validate_json(raw)),
                t.scores: lambda raw: self.view.apply_score(EnterpriseScore.model_validate_json(raw)),
                t.allocations: lambda raw: self.view.apply_allocation(AllocationSummary.model_validate_json(raw)),
                t.alerts: self._apply_alert,
                t.dlq: lambda raw: self.view.apply_dead_letter(DeadLetter.model_validate_json(raw))}

    def _apply_alert(self, raw: bytes) -> None:
        alert = RiskAlert.model_validate_json(raw)
        if self.view.apply_alert(alert) and self.status.state == "live":
            for queue in list(self._subscribers):
                with contextlib.suppress(asyncio.QueueFull):
                    queue.put_nowait(alert)

    async def _tail(self) -> None:
        from aiokafka import AIOKafkaConsumer, TopicPartition
        from aiokafka.errors import KafkaError

        from streams.adapters.kafka import client_kwargs

        backoff = 1.0
        while not self._stopping.is_set():
            consumer = AIOKafkaConsumer(enable_auto_commit=False, auto_offset_reset="earliest",
                                        client_id=f"{self.settings.kafka.client_id}-console",
                                        **client_kwargs(self.settings.kafka))
            try:
                await consumer.start()
                handlers = self._topics()
                await consumer._client.force_metadata_update()  # noqa: SLF001 - topics we do not subscribe to
                present = {t: consumer.partitions_for_topic(t) for t in handlers}
                missing = sorted(t for t, parts in present.items() if not parts)
                if len(missing) == len(handlers):
                    self.status = FeedStatus("waiting_for_topics", "no riskmon topic exists yet (is a worker running?)",
                                             missing_topics=missing)
                    await self._sleep(2.0)
                    continue
                tps = [TopicPartition(t, p) for t, parts in present.items() for p in sorted(parts or ())]
                consumer.assign(tps)
                await consumer.seek_to_beginning(*tps)
                end = await consumer.end_offsets(tps)
                self.view = ConsoleView()
                self.status = FeedStatus("catching_up", missing_topics=missing)
                pending = {tp for tp in tps if end[tp] > 0}
                if not pending:
                    self._caught_up()
                backoff = 1.0
                recheck = time.monotonic() + 10.0
                while not self._stopping.is_set():
                    batch = await consumer.getmany(timeout_ms=500, max_records=5000)
                    for tp, messages in batch.items():
                        handle = handlers[tp.topic]
                        for msg in messages:
                            self.status.records += 1
                            try:
                                handle(msg.value or b"")
                            except (ValidationError, ValueError) as exc:
                                self.status.undecodable += 1
                                log.warning("undecodable record topic=%s partition=%s offset=%s: %s", tp.topic,
                                            tp.partition, msg.offset, str(exc).splitlines()[0])
                        if messages and messages[-1].offset + 1 >= end[tp]:
                            pending.discard(tp)
                    if pending:
                        for tp in list(pending):
                            if await consumer.position(tp) >= end[tp]:
                                pending.discard(tp)
                        if not pending:
                            self._caught_up()
                    if missing and time.monotonic() > recheck:  # a topic created later: start over with it
                        recheck = time.monotonic() + 10.0
                        await consumer._client.force_metadata_update()  # noqa: SLF001
                        if any(consumer.partitions_for_topic(t) for t in missing):
                            break
            except KafkaError as exc:
                self.status = FeedStatus("kafka_unavailable", f"{self.settings.kafka.bootstrap}: {exc!r}")
                log.warning("Kafka unavailable (%r); retrying in %.0f s", exc, backoff)
                await self._sleep(backoff)
                backoff = min(backoff * 2, 30.0)
            finally:
                with contextlib.suppress(Exception):
                    await consumer.stop()

    def _caught_up(self) -> None:
        self.status.state = "live"
        self.status.caught_up_at = time.time()

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    # ----------------------------------------------------------------- Redis

    def _redis_stores(self) -> Stores:
        from streams.adapters.redis_store import RedisFeatureStore, RedisRegistry, connect

        if self._redis is None:
            self._redis = connect(self.settings.redis)
        prefix = self.settings.redis.prefix
        return RedisFeatureStore(self._redis, prefix), RedisRegistry(self._redis, prefix)

    async def _redis_call(self, fn: Callable[[], Any]) -> tuple[Any, str]:
        """Run a Redis read in a thread; returns (value, "") or (None, a one-line reason)."""
        from streams.errors import StreamError

        try:
            value = await asyncio.get_running_loop().run_in_executor(None, fn)
            self._redis_error = ""
            return value, ""
        except StreamError as exc:
            self._redis_error = f"Redis unavailable: {exc}"
            return None, self._redis_error

    async def names(self) -> dict[str, str]:
        if time.monotonic() - self._names_at > _NAMES_TTL_S:
            def read() -> dict[str, str]:
                _, reg = self._stores_factory()
                return {e: info.name for e in reg.enterprise_ids() if (info := reg.get(e)) is not None}

            value, _ = await self._redis_call(read)
            if value is not None:
                self._names, self._names_at = value, time.monotonic()
        return self._names

    def banner(self) -> str:
        s = self.status
        parts = []
        if s.state == "kafka_unavailable":
            parts.append(f"Kafka unavailable, showing what was read before ({s.detail})")
        elif s.state == "waiting_for_topics":
            parts.append(f"Waiting for the riskmon topics: {s.detail}")
        elif s.state in ("starting", "catching_up"):
            parts.append(f"Reading the topics from the beginning ({s.records:,} records so far)…")
        if self._redis_error:
            parts.append(self._redis_error)
        return " · ".join(parts)

    # ----------------------------------------------------------------- HTTP

    def make_app(self) -> web.Application:
        app = web.Application(middlewares=[self._guard])
        app.router.add_get("/", self.portfolio)
        app.router.add_get("/lines", self.lines)
        app.router.add_get("/enterprise/{eid:.+}", self.enterprise)
        app.router.add_get("/alerts", self.alerts)
        app.router.add_get("/events/alerts", self.alert_events)
        app.router.add_get("/api/portfolio", self.api_portfolio)
        app.router.add_get("/api/lines", self.api_lines)
        app.router.add_get("/health", self.health)
        app.router.add_get("/static/{name}", self.static)
        app.on_startup.append(self._on_startup)
        app.on_shutdown.append(self._on_shutdown)
        app.on_cleanup.append(self._on_cleanup)
        return app

    async def _on_startup(self, app: web.Application) -> None:
        if self._tail_enabled:
            self._tail_task = asyncio.create_task(self._tail(), name="riskmon-console-tail")

    async def _on_shutdown(self, app: web.Application) -> None:
        self._stopping.set()
        for queue in list(self._subscribers):
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(None)  # type: ignore[arg-type]  # wakes the SSE handlers up to close

    async def _on_cleanup(self, app: web.Application) -> None:
        self._stopping.set()
        if self._tail_task is not None:
            self._tail_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._tail_task

    @web.middleware
    async def _guard(self, request: web.Request,
                     handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        if is_loopback(self.settings.console.host):
            host = (request.host or "").rsplit(":", 1)[0] if not (request.host or "").startswith("[") \
                else (request.host or "").split("]")[0] + "]"
            if not is_loopback(host):
                return _page(403, render.error_page(403, f"this console serves loopback only, not host {host!r}"))
        if request.method not in ("GET", "HEAD"):
            return _page(405, render.error_page(405, f"the console is read-only: {request.method} is not allowed"))
        try:
            response = await handler(request)
        except BadQuery as exc:
            return _page(400, render.error_page(400, str(exc)))
        except _NotFound as exc:
            return _page(404, render.error_page(404, str(exc)))
        except web.HTTPNotFound:
            return _page(404, render.error_page(404, f"no page at {request.path[:200]}"))
        except web.HTTPMethodNotAllowed:
            return _page(405, render.error_page(405, "the console is read-only"))
        except web.HTTPException:
            raise
        except (asyncio.CancelledError, ConnectionResetError):
            raise
        except Exception as exc:  # a bug: one line to the user, the traceback to the log
            log.exception("console error on %s", request.path_qs[:300])
            return _page(500, render.error_page(500, f"internal error ({type(exc).__name__}); see the console's log"))
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Content-Security-Policy",
                                    "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        return response

    async def portfolio(self, request: web.Request) -> web.Response:
        _no_params(request)
        return _html(render.portfolio_page(self.view.portfolio(), self.view.recent_alerts(20), banner=self.banner()))

    async def lines(self, request: web.Request) -> web.Response:
        query = parse_lines_query(request.query, self.settings.console.page_size)
        names = await self.names()
        page = self.view.lines_page(query, names)
        return _html(render.lines_page(page, names, self.view.segments(), banner=self.banner()))

    async def enterprise(self, request: web.Request) -> web.Response:
        _no_params(request)
        eid = parse_enterprise_id(request.match_info["eid"])
        names = await self.names()
        if not self.view.knows(eid) and eid not in names:
            raise _NotFound(f"unknown enterprise {eid!r}: no credit line, score or registry entry")
        monthly, features, note = await self._features_of(eid)
        return _html(render.enterprise_page(
            eid, names.get(eid), self.view.scores.get(eid), self.view.lines.get(eid), self.view.history.get(eid, {}),
            monthly, features, self.view.recent_alerts(200, enterprise_id=eid), note=note, banner=self.banner()))

    async def _features_of(self, eid: str) -> tuple[list[tuple[str, float, float]], dict[str, float] | None, str]:
        from streams.features.vector import monthly_yuan, to_vector

        def read() -> tuple[Any, dt.date | None]:
            store, _ = self._stores_factory()
            return store.load_many([eid], with_seen=False)[0], store.watermark()

        value, error = await self._redis_call(read)
        if value is None:
            return [], None, error
        state, watermark = value
        sales, purchases = monthly_yuan(state.counters, "amt_out"), monthly_yuan(state.counters, "amt_in")
        months = sorted(set(sales) | set(purchases))
        monthly = [(f"{m // 12:04d}-{m % 12 + 1:02d}", sales.get(m, 0.0), purchases.get(m, 0.0))
                   for m in range(months[0], months[-1] + 1)] if months else []
        features = to_vector(state, watermark) if watermark is not None and state.counters else None
        note = f"features as of the watermark {watermark.isoformat()}" if watermark else "no invoice applied yet"
        return monthly, features, note

    async def alerts(self, request: web.Request) -> web.Response:
        rule = request.query.get("rule", "")
        unknown = sorted(set(request.query) - {"rule"})
        if unknown:
            raise BadQuery(f"unknown query parameter {unknown[0]!r}; use rule")
        from streams.alerts import RULES

        if rule and rule not in RULES:
            raise BadQuery(f"rule must be one of {', '.join(RULES)} (got {rule[:60]!r})")
        counts = self.view.portfolio().alerts_by_rule
        return _html(render.alerts_page(self.view.recent_alerts(200, rule=rule or None), counts, banner=self.banner()))

    async def alert_events(self, request: web.Request) -> web.StreamResponse:
        """Server-sent events: one ``alert`` event per new alert (its HTML row and JSON), a comment every 15 s."""
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                               "X-Accel-Buffering": "no"})
        await response.prepare(request)
        queue: asyncio.Queue[RiskAlert] = asyncio.Queue(maxsize=1000)
        self._subscribers.add(queue)
        try:
            await response.write(b"retry: 2000\n: connected\n\n")
            while not self._stopping.is_set():
                try:
                    alert = await asyncio.wait_for(queue.get(), 15.0)
                except TimeoutError:
                    await response.write(b": keep-alive\n\n")
                    continue
                if alert is None:
                    break
                data = json.dumps({"html": render.alert_item(alert), "alert": alert.model_dump(mode="json")})
                await response.write(f"id: {alert.alert_id}\nevent: alert\ndata: {data}\n\n".encode())
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self._subscribers.discard(queue)
        return response

    async def api_portfolio(self, request: web.Request) -> web.Response:
        p = self.view.portfolio()
        body = {"status": self.status.state, "n_enterprises": p.n_enterprises, "n_lines": p.n_lines,
                "total_lent_yuan": p.total_lent_yuan, "expected_profit_yuan": p.expected_profit_yuan,
                "budget_yuan": p.budget_yuan, "dlq_by_reason": p.dlq_by_reason, "alerts_by_rule": p.alerts_by_rule,
                "by_rating": [asdict(b) for b in p.by_rating], "by_segment": [asdict(b) for b in p.by_segment],
                "last_allocation": _dump(p.last_allocation)}
        return web.json_response(body)

    async def api_lines(self, request: web.Request) -> web.Response:
        query = parse_lines_query(request.query, self.settings.console.page_size)
        page = self.view.lines_page(query, await self.names())
        return web.json_response({"total": page.total, "page": query.page, "pages": page.pages,
                                  "rows": [line.model_dump(mode="json") for line in page.rows]})

    async def health(self, request: web.Request) -> web.Response:
        s = self.status
        return web.json_response({"status": s.state, "records": s.records, "undecodable": s.undecodable,
                                  "missing_topics": s.missing_topics, "redis": self._redis_error or "ok",
                                  "alerts": len(self.view.alerts), "lines": len(self.view.lines)})

    async def static(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        types = {".css": "text/css", ".js": "text/javascript"}
        kind = next((t for ext, t in types.items() if name.endswith(ext)), None)
        path = STATIC / name
        if kind is None or "/" in name or not path.is_file():
            raise web.HTTPNotFound()
        return web.Response(body=path.read_bytes(), content_type=kind, headers={"Cache-Control": "max-age=300"})


class _NotFound(Exception):  # noqa: N818 - rendered as a 404 page by the middleware
    """Something the URL names does not exist (a 404 page with this message)."""


def _page(status: int, text: str) -> web.Response:
    return web.Response(status=status, text=text, content_type="text/html")


def _html(text: str) -> web.Response:
    return web.Response(text=text, content_type="text/html")


def _no_params(request: web.Request) -> None:
    if request.query:
        raise BadQuery(f"this page takes no query parameters (got {sorted(request.query)[0]!r})")


def _dump(obj: BaseModel | None) -> dict[str, Any] | None:
    return None if obj is None else obj.model_dump(mode="json")


async def serve(settings: Settings, *, host: str, port: int, on_ready: Callable[[str], None] | None = None) -> None:
    """Run the console until cancelled (Ctrl-C / SIGTERM)."""
    console = ConsoleApp(settings.model_copy(update={"console": settings.console.model_copy(update={"host": host})}))
    runner = web.AppRunner(console.make_app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    server = site._server  # noqa: SLF001 - aiohttp exposes the bound port only here
    sockets = getattr(server, "sockets", None) or []
    bound = sockets[0].getsockname()[1] if sockets else port
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{bound}/"
    if on_ready is not None:
        on_ready(url)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
