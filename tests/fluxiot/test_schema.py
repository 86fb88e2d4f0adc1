import pytest
import yaml
from django.core.management import call_command

pytestmark = pytest.mark.django_db


def test_openapi_schema_is_valid_and_complete(tmp_path):
    out = tmp_path / "schema.yaml"
    # --validate checks the document against the OpenAPI 3 meta-schema; --fail-on-warn refuses any
    # endpoint drf-spectacular could not describe.
    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(out))
    schema = yaml.safe_load(out.read_text())
    paths = set(schema["paths"])
    for path in [
        "/api/v1/auth/token/",
        "/api/v1/auth/token/refresh/",
        "/api/v1/devices/",
        "/api/v1/devices/{id}/",
        "/api/v1/devices/{id}/activate/",
        "/api/v1/devices/{id}/rotate-credentials/",
        "/api/v1/devices/{id}/disable/",
        "/api/v1/devices/{id}/status/",
        "/api/v1/devices/import/",
        "/api/v1/device-groups/",
        "/api/v1/device-groups/{id}/",
        "/api/v1/device-groups/{id}/devices/",
        "/api/v1/device-groups/{id}/move-devices/",
    ]:
        assert path in paths, path
    list_params = {p["name"] for p in schema["paths"]["/api/v1/devices/"]["get"]["parameters"]}
    assert {"in_group", "tags", "tags_all", "status", "q", "ordering", "page", "page_size"} <= list_params


def test_schema_endpoint(client, administrator):
    client.force_login(administrator)
    response = client.get("/api/schema/", HTTP_ACCEPT="application/json")
    assert response.status_code == 200
    assert response.json()["info"]["title"] == "FluxIoT API"
