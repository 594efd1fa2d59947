"""``LeanRoute``: a FastAPI route for hot JSON endpoints that skips FastAPI's per-request
machinery but keeps its OpenAPI.

FastAPI's request handler (dependency solving, parameter collection, body parsing)
cost about as much as a cache-hit /recommend does itself: in process, the same hit
answered 1.5–2× faster from a handler without it. A lean endpoint has the
signature ``(body: Model, request: Request) -> Response``: FastAPI documents it as
usual (body schema, ``response_model``, API-key security from the router), and at request
time ``LeanRoute`` does only the three things that signature asks for, itself:

1. the API key (``security.check_api_key``, what ``require_api_key`` runs: lean routes
   are always protected, like every route but /healthz and /readyz);
2. the body: ``Model.model_validate_json``, with errors reported exactly as FastAPI
   reports them (422, ``loc`` starting with ``"body"``);
3. awaiting the endpoint, which returns a ready ``Response``.
"""

from __future__ import annotations

import inspect

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError

from service.security import check_api_key


def body_errors(error: ValidationError) -> list[dict]:
    """pydantic's errors with the ``body`` prefix FastAPI puts on request-body errors."""
    return [
        {**e, "loc": ("body", *e["loc"])}
        for e in error.errors(include_url=False, include_context=True)
    ]


class LeanRoute(APIRoute):
    def __init__(self, path: str, endpoint, **kwargs):
        super().__init__(path, endpoint, **kwargs)
        params = list(inspect.signature(endpoint).parameters.values())
        model = params[0].annotation if params else None
        if isinstance(model, str):  # postponed annotations
            model = endpoint.__globals__.get(model)
        if not (
            len(params) == 2
            and isinstance(model, type)
            and issubclass(model, BaseModel)
            and params[1].name == "request"
        ):
            raise TypeError(f"{endpoint.__name__}: a LeanRoute endpoint is (body: Model, request)")
        self.body_model: type[BaseModel] = model

    def get_route_handler(self):
        return self.respond

    async def respond(self, request: Request) -> Response:
        check_api_key(request)
        raw = await request.body()
        if not raw.strip():
            raise RequestValidationError(
                [{"type": "missing", "loc": ("body",), "msg": "Field required", "input": None}]
            )
        try:
            body = self.body_model.model_validate_json(raw)
        except ValidationError as e:
            raise RequestValidationError(body_errors(e)) from None
        return await self.endpoint(body, request)


class LeanDispatch:
    """Pure ASGI, the innermost of the app's middleware: sends a request for a LeanRoute
    straight to it, by a dict lookup on (method, path).

    FastAPI's router tries the routes one by one and wraps each call in exception and
    exit-stack layers: FastAPI + Starlette took 17 % of a cache-hit /recommend's samples
    under wrk (py-spy), 6 % with this lookup in front. Lean routes have static paths and
    no dependencies, so none of it is needed. The route's errors become responses through
    the app's own exception handlers, as FastAPI's ExceptionMiddleware would do; everything
    else goes to the router. Lean routes must be included without a prefix: the table
    uses their own paths.
    """

    def __init__(self, app, routes: list[LeanRoute], exception_handlers: dict):
        self.app, self.exception_handlers = app, exception_handlers
        self.routes = {(method, route.path): route for route in routes for method in route.methods}

    async def __call__(self, scope, receive, send):
        route = None
        if scope["type"] == "http":
            route = self.routes.get((scope["method"], route_path(scope)))
        if route is None:
            return await self.app(scope, receive, send)
        scope["route"], scope["endpoint"], scope["path_params"] = route, route.endpoint, {}
        request = Request(scope, receive)
        try:
            response = await route.respond(request)
        except Exception as exc:
            handler = self.handler_for(exc)
            if handler is None:
                raise
            response = await handler(request, exc)
        await response(scope, receive, send)

    def handler_for(self, exc: Exception):
        handlers = self.exception_handlers
        return next((handlers[c] for c in type(exc).__mro__ if c in handlers), None)


def route_path(scope) -> str:
    """The path the router matches: without the ``root_path`` a proxy mounted us under."""
    path, root = scope["path"], scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path
