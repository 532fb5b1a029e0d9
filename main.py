"""Application factory: settings, logging, middleware, error handlers and routers."""

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
from fastapi import Depends, FastAPI
from fastapi.middleware.cors import CORSMiddleware

import background_tasks
import jobs
from config import Settings, get_settings
from dependencies import get_current_user, identify_personal_token
from exceptions import register_exception_handlers
from logging_config import configure_logging
from metrics import MetricsMiddleware
from middleware import BodyLimitMiddleware, RequestContextMiddleware, refuse_declared_oversize
from models import RootInfo
from openapi_docs import install_docs
from openapi_schema import OPENAPI_TAGS, install_openapi, operation_id
from rate_limit_config import RATE_LIMIT_HEADERS, build_rate_limiter, enforce_rate_limits
from resources import Resources
from routers import account as account_routes
from routers import auth as auth_routes
from routers import files as file_routes
from routers import health as health_routes
from routers import metrics as metrics_routes
from routers import sessions as session_routes
from routers import tasks as task_routes
from routers import tokens as token_routes

logger = logging.getLogger(__name__)

VERSION = "1.0.0"
DESCRIPTION = (
    "A multi-user task manager: register, log in, and manage your own tasks, tags and files. "
    "Every error is an RFC 9457 problem document with a stable `code`."
)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    logger.info(
        "Task Manager API %s starting (database: %s)",
        VERSION,
        settings.database_url.split(":", 1)[0],
    )
    given: Resources | None = app.state.given_resources
    # Built from this app's settings, owned (and closed) here, unless the caller lent its own.
    resources = given or Resources(settings)
    app.state.resources = resources
    try:
        await anyio.to_thread.run_sync(background_tasks.sweep_at_startup, resources)
        # Embedded: the runner thread starts (and sweeps the outbox); with REDIS_URL, workers do.
        runner = None
        if resources.runner is None:
            runner = jobs.build_runner(resources)
            resources.runner = runner
            runner.start()
        # What is built by now lives as long as the worker: left to the collector, every full
        # collection walks all of it again, a pause of tens of milliseconds under load (the
        # p99 of the fastest routes, docs/PERFORMANCE.md). Frozen, collections skip it.
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            gc.unfreeze()
            if runner is not None:
                await anyio.to_thread.run_sync(runner.stop)
                resources.runner = None
    finally:
        # Connections opened on this event loop end with it, lent resources' too.
        await resources.close_async()
        if given is None:
            await anyio.to_thread.run_sync(resources.close)


def create_app(settings: Settings | None = None, *, resources: Resources | None = None) -> FastAPI:
    """Build the ASGI application; its lifespan builds what it uses from `settings`.

    `resources` (tests): use these instead, and leave them open (and their runner, if any, to
    whoever set it) when the lifespan ends.
    """
    settings = settings or get_settings()
    configure_logging(settings)
    app = FastAPI(
        title="Task Manager API",
        version=VERSION,
        description=DESCRIPTION,
        openapi_tags=OPENAPI_TAGS,
        # Served by install_docs from bundled assets: FastAPI's own pages need a CDN.
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
        generate_unique_id_function=operation_id,
        # First of every route's dependencies: an oversized body is refused before anything
        # else; then a spent budget costs no query and no hash.
        dependencies=[Depends(refuse_declared_oversize), Depends(enforce_rate_limits)],
    )
    app.state.settings = settings
    # Rate limits count a personal access token's requests against its user's budgets.
    app.state.identify_caller = identify_personal_token
    app.state.given_resources = resources
    if resources is not None:
        # Lent: usable at once, with or without the lifespan.
        app.state.resources = resources
    app.state.limiter = build_rate_limiter(settings)
    register_exception_handlers(app)
    # Innermost of the three, so its 413 gets CORS headers, a request id and an access line.
    app.add_middleware(BodyLimitMiddleware, max_body_size=settings.max_body_bytes)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "PATCH", "DELETE"],
            allow_headers=[
                *("Authorization", "Content-Type", "X-Request-ID"),
                *("If-Match", "If-None-Match", "Idempotency-Key"),
            ],
            expose_headers=[
                *("X-Request-ID", "X-Total-Count", "Link", "Location", "X-Cache"),
                *RATE_LIMIT_HEADERS,
                "Retry-After",
                *("ETag", "Idempotent-Replayed"),
            ],
        )
    app.add_middleware(RequestContextMiddleware)
    if settings.metrics_token is not None:
        # Outermost: it sees the final status of every response, 500s included.
        app.add_middleware(MetricsMiddleware)
    app.include_router(auth_routes.router)
    # Everything but auth and operations needs a token: nothing is public by accident.
    authenticated = [Depends(get_current_user)]
    app.include_router(task_routes.router, dependencies=authenticated)
    app.include_router(file_routes.router, dependencies=authenticated)
    app.include_router(health_routes.router)
    app.include_router(metrics_routes.router)
    # After the busy routes: a request is matched against the routes in order.
    app.include_router(session_routes.router)
    app.include_router(account_routes.router)
    app.include_router(token_routes.router)

    @app.get("/", response_model=RootInfo, tags=["operations"], summary="Service information")
    def root() -> RootInfo:
        """Service name, status and version."""
        return RootInfo(message="Task Manager API", status="running", version=VERSION)

    install_openapi(app)
    install_docs(app)
    return app


app = create_app()
