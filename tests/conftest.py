import pytest
from rest_framework.test import APIClient

from fluxiot import roles
from tests.factories import UserFactory


@pytest.fixture
def api_client():
    return APIClient()


def _client_for(user):
    client = APIClient()
    client.force_authenticate(user)
    return client


@pytest.fixture
def viewer(db):
    return UserFactory(username="viewer", roles=[roles.VIEWER])


@pytest.fixture
def operator(db):
    return UserFactory(username="operator", roles=[roles.OPERATOR])


@pytest.fixture
def administrator(db):
    return UserFactory(username="administrator", roles=[roles.ADMINISTRATOR])


@pytest.fixture
def nobody(db):
    """Authenticated, but in no role."""
    return UserFactory(username="nobody")


@pytest.fixture
def viewer_client(viewer):
    return _client_for(viewer)


@pytest.fixture
def operator_client(operator):
    return _client_for(operator)


@pytest.fixture
def admin_client_api(administrator):
    return _client_for(administrator)


@pytest.fixture
def nobody_client(nobody):
    return _client_for(nobody)


@pytest.fixture
def bus():
    """A listener on the real channel layer; use ``bus(*types)``."""
    from tests.bus import BusListener

    listeners = []

    def listen(*event_types):
        listener = BusListener(*event_types)
        listeners.append(listener)
        return listener

    yield listen
    for listener in listeners:
        listener.close()


@pytest.fixture(autouse=True)
def _fresh_cache():
    """Throttle counters live in the (Redis) cache: start every test from zero."""
    from django.core.cache import cache

    cache.clear()
