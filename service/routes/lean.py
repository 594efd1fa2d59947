"""``LeanRoute``: a FastAPI route for hot endpoints that skips FastAPI's per-request
machinery but keeps its OpenAPI.

FastAPI's request handler (dependency solving, parameter collection, body parsing)
cost about as much as a cache-hit /recommend does itself: in process, the same hit
answered 1.5–2× faster from a handler without it. A lean endpoint takes ``request`` and
either one body model, ``(body: Model, request) -> Response``, or path and query
parameters only, ``(request, item_id: str = Path(...), k: int = Query(...)) -> Response``.
FastAPI documents it as usual (parameters, body schema, ``response_model``, API-key
security from the router), and at request time ``LeanRoute`` does only what that
signature asks for, itself:

1. the API key (``security.check_api_key``, what ``require_api_key`` runs: lean routes
   are always protected, like every route but /healthz and /readyz);
2. the body: ``Model.model_validate_json``, or the path and query parameters: FastAPI's
   own ``request_params_to_args``; errors are reported exactly as FastAPI reports them
   (422, ``loc`` starting with ``"body"``, ``"path"`` or ``"query"``);
3. awaiting the endpoint, which returns a ready ``Response``.
"""

from __future__ import annotations

from fastapi import Request, Response
from fastapi.dependencies.utils import get_dependant, request_params_to_args
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError
from starlette.routing import Match

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
        own = get_dependant(path=self.path_format, call=endpoint)  # without router deps
        body = own.body_params
        model = body[0].field_info.annotation if len(body) == 1 else None
        body_is_model = isinstance(model, type) and issubclass(model, BaseModel)
        params_only = not body
        extras = own.dependencies or own.header_params or own.cookie_params
        if (
            own.request_param_name != "request"
            or extras
            or not (params_only or (body_is_model and not (own.path_params or own.query_params)))
        ):
            raise TypeError(
                f"{endpoint.__name__}: a LeanRoute endpoint is (body: Model, request) or "
                "(request, path and query parameters)"
            )
        self.body_model: type[BaseModel] | None = model
        self.params = own

    def get_route_handler(self):
        return self.respond

    async def respond(self, request: Request) -> Response:
        check_api_key(request)
        if self.body_model is None:
            return await self.endpoint(request=request, **self.parameters(request))
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

    def parameters(self, request: Request) -> dict:
        path, path_errors = request_params_to_args(self.params.path_params, request.path_params)
        query, query_errors = request_params_to_args(self.params.query_params, request.query_params)
        if path_errors or query_errors:
            raise RequestValidationError(path_errors + query_errors)
        return {**path, **query}


class LeanDispatch:
    """Pure ASGI, the innermost of the app's middleware: sends a request for a LeanRoute
    straight to it: a dict lookup on (method, path) for static paths, the route's own
    match (Starlette's path regex and converters) for paths with parameters.

    FastAPI's router tries the routes one by one and wraps each call in exception and
    exit-stack layers: FastAPI + Starlette took 17 % of a cache-hit /recommend's samples
    under wrk (py-spy), 6 % with this lookup in front. Lean routes have no dependencies,
    so none of it is needed. The route's errors become responses through the app's own
    exception handlers, as FastAPI's ExceptionMiddleware would do; everything else goes
    to the router. Lean routes must be included without a prefix (the table uses their
    own paths) and must not overlap other routes (they are matched first).
    """

    def __init__(self, app, routes: list[LeanRoute], exception_handlers: dict):
        self.app, self.exception_handlers = app, exception_handlers
        self.static = {
            (method, route.path): route
            for route in routes
            if not route.param_convertors
            for method in route.methods
        }
        self.templated = [route for route in routes if route.param_convertors]

    def match(self, scope) -> LeanRoute | None:
        route = self.static.get((scope["method"], route_path(scope)))
        if route is not None:
            scope["route"], scope["endpoint"], scope["path_params"] = route, route.endpoint, {}
            return route
        for route in self.templated:
            found, child = route.matches(scope)
            if found is Match.FULL:
                scope.update(child)
                scope["route"] = route
                return route
        return None

    async def __call__(self, scope, receive, send):
        route = self.match(scope) if scope["type"] == "http" else None
        if route is None:
            return await self.app(scope, receive, send)
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
