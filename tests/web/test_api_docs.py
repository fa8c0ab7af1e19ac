"""/api/docs/ describes the invoke API as well as the REST API: every route of serving/gateway/urls.py is
in the OpenAPI schema the docs read, described (not a placeholder), with the request fields the gateway
accepts and its errors in the format of its own API."""

from __future__ import annotations

import pytest
from django.test import Client
from django.urls import URLPattern

from serving.gateway import openapi, request_fields, urls

ROUTES = {
    pattern.name: str(pattern.pattern) for pattern in urls.urlpatterns if isinstance(pattern, URLPattern)
}


@pytest.fixture(scope="module")
def schema(django_db_setup, django_db_blocker) -> dict:
    with django_db_blocker.unblock():
        response = Client().get("/api/schema/", {"format": "json"})
    assert response.status_code == 200
    return response.json()


@pytest.mark.parametrize("name", sorted(ROUTES))
def test_every_invoke_route_is_in_the_schema_and_described(schema, name) -> None:
    path = openapi.openapi_path(ROUTES[name])
    assert path in schema["paths"], path
    assert name in openapi.OPERATIONS, f"describe {path} in serving/gateway/openapi.py"
    assert (
        schema["paths"][path]["post" if "post" in schema["paths"][path] else "get"]["summary"]
        != "Not described yet"
    )


def test_the_invoke_paths_are_the_ones_clients_call(schema) -> None:
    for path in ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/models",
                 "/model/{model_id}/converse", "/model/{model_id}/converse-stream",
                 "/model/{model_id}/invoke", "/model/{model_id}/invoke-with-response-stream"):  # fmt: skip
        assert path in schema["paths"], path


def test_a_request_body_lists_exactly_the_fields_the_gateway_accepts(schema) -> None:
    body = schema["paths"]["/v1/chat/completions"]["post"]["requestBody"]["content"]["application/json"]
    assert set(body["schema"]["properties"]) == set(request_fields.FIELDS["chat.completions"])
    assert body["schema"]["required"] == ["model", "messages"] and "max_tokens" in body["example"]


def test_invoke_errors_are_documented_in_their_own_apis_format(schema) -> None:
    chat = schema["paths"]["/v1/chat/completions"]["post"]["responses"]
    assert chat["401"]["content"]["application/json"]["schema"]["$ref"].endswith("/OpenAIError")
    converse = schema["paths"]["/model/{model_id}/converse"]["post"]["responses"]
    assert converse["403"]["content"]["application/json"]["schema"]["$ref"].endswith("/BedrockError")
    assert {"OpenAIError", "BedrockError"} <= set(schema["components"]["schemas"])


def test_the_rest_api_is_still_there(schema) -> None:
    assert "/api/models/" in schema["paths"] and "/api/deployments/" in schema["paths"]


def test_routes_become_openapi_paths() -> None:
    assert openapi.openapi_path("model/<str:model_id>/converse") == "/model/{model_id}/converse"
    assert openapi.openapi_path("v1/models") == "/v1/models"


def test_the_docs_page_is_public(client, db) -> None:
    assert client.get("/api/docs/").status_code == 200
