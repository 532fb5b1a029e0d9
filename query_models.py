"""Query models validated in one step, documented as FastAPI documents them.

A route parameter `Annotated[Model, Query()]` makes FastAPI pick each field's value out of the
query string in Python, field by field, on every request: a sixth of a list's CPU for its
thirteen fields (docs/PERFORMANCE.md). `query_model(Model)` is a dependency that groups the
query string once and lets pydantic validate the whole model, with FastAPI's own rules: a field
declared as a list takes every value of its name, any other field the last one, and a 422 names
each bad parameter as `("query", name)`. `complete_openapi` documents its fields as the query
parameters FastAPI would have listed (`documented_parameters`).
"""

from collections.abc import Awaitable, Callable
from functools import cache
from typing import Annotated, Any, TypeVar

from fastapi import FastAPI, Query, Request
from fastapi._compat import field_annotation_is_sequence
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)

# The attribute of a `query_model` dependency naming the model it validates.
_MODEL_ATTRIBUTE = "query_model"


def query_model(model: type[M]) -> Callable[[Request], Awaitable[M]]:
    """A dependency answering the request's query string validated as `model`; declared as
    `Annotated[Model, Depends(query_model(Model))]`."""
    # FastAPI's own test of a field that takes every value of its name (a list, set, tuple).
    lists = frozenset(
        name for name, f in model.model_fields.items() if field_annotation_is_sequence(f.annotation)
    )
    fields = frozenset(model.model_fields)

    async def validated_query(request: Request) -> M:
        grouped: dict[str, list[str]] = {}
        for key, value in request.query_params.multi_items():
            grouped.setdefault(key, []).append(value)
        data: dict[str, Any] = {
            # An unknown name stays a list only when repeated: the model's extra policy decides.
            key: values if key in lists or (key not in fields and len(values) > 1) else values[-1]
            for key, values in grouped.items()
        }
        try:
            return model.model_validate(data)
        except ValidationError as error:
            errors = [
                {**item, "loc": ("query", *item["loc"])} for item in error.errors(include_url=False)
            ]
            raise RequestValidationError(errors) from None

    setattr(validated_query, _MODEL_ATTRIBUTE, model)
    return validated_query


def model_of(call: Callable[..., Any] | None) -> type[BaseModel] | None:
    """The model a `query_model` dependency validates; None for any other callable."""
    model: type[BaseModel] | None = getattr(call, _MODEL_ATTRIBUTE, None)
    return model


@cache
def documented_parameters(model: type[BaseModel]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The query parameters FastAPI documents for `Annotated[model, Query()]`, and the schemas
    they refer to: from a route declaring exactly that, on an app of its own."""
    probe = FastAPI()

    def declared(params: Any) -> None:
        """Never called: its signature is what FastAPI documents."""

    declared.__annotations__["params"] = Annotated[model, Query()]
    probe.get("/")(declared)
    document = probe.openapi()
    parameters: list[dict[str, Any]] = document["paths"]["/"]["get"]["parameters"]
    schemas: dict[str, Any] = document.get("components", {}).get("schemas", {})
    return parameters, schemas
