import pytest
from rest_framework.test import APIClient

from fluxiot import roles
from tests.factories import UserFactory

# Private Mosquitto brokers (mosquitto_broker, dynsec_broker, dynsec_settings).
pytest_plugins = ["tests.brokers", "tests.wasm"]


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
def _fresh_cache(settings):
    """Throttle counters live in the (Redis) cache: start every test from zero. Only this run's
    keys go (FLUSHDB would wipe the channel groups of another run on the same Redis)."""
    import redis

    prefix = settings.CACHES["default"]["KEY_PREFIX"]
    client = redis.Redis.from_url(settings.REDIS_URL)
    keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


# --- Admin pages: a Django test client logged in as staff with one role ----------------------------


def login_staff(client, username: str, role: str):
    """Log ``client`` in as a new staff user holding ``role``; returns the user."""
    user = UserFactory(username=username, is_staff=True, roles=[role])
    client.force_login(user)
    return user


@pytest.fixture
def admin_staff(client):
    login_staff(client, "boss", roles.ADMINISTRATOR)
    return client


@pytest.fixture
def operator_staff(client):
    login_staff(client, "ops", roles.OPERATOR)
    return client


@pytest.fixture
def viewer_staff(client):
    login_staff(client, "watcher", roles.VIEWER)
    return client
