"""FluxIoT settings, read from the environment.

Every value has a default that is safe for the embedded mode (one machine, SQLite under ``./var/``,
in-memory channel layer, Celery tasks run in-process). Production sets ``DATABASE_URL``,
``REDIS_URL`` (and later ``MQTT_URL``) and ``SECRET_KEY``. The README lists every variable.
"""

from __future__ import annotations

import secrets
from datetime import timedelta
from pathlib import Path

import environ

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()

VAR_DIR = Path(env.str("FLUXIOT_VAR_DIR", default=str(BASE_DIR / "var")))
VAR_DIR.mkdir(parents=True, exist_ok=True)

DEBUG = env.bool("DEBUG", default=False)


def _secret_key() -> str:
    """The SECRET_KEY: from the environment, or (only with DEBUG on) generated once into var/."""
    key = env.str("SECRET_KEY", default="")
    if key:
        return key
    if not DEBUG:
        from django.core.exceptions import ImproperlyConfigured

        raise ImproperlyConfigured("SECRET_KEY must be set when DEBUG is off.")
    key_file = VAR_DIR / "secret_key"
    if not key_file.exists():
        key_file.write_text(secrets.token_urlsafe(50))
        key_file.chmod(0o600)
    return key_file.read_text().strip()


SECRET_KEY = _secret_key()

ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["127.0.0.1", "localhost", "[::1]"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

# Where `manage.py serve` listens (the embedded mode and the production web process alike).
WEB_HOST = env.str("WEB_HOST", default="127.0.0.1")
WEB_PORT = env.int("WEB_PORT", default=8000)

INSTALLED_APPS = [
    "daphne",
    "fluxiot.apps.FluxAdminConfig",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "django_prometheus",
    "rest_framework",
    "rest_framework_simplejwt",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "channels",
    "django_celery_beat",
    "fluxiot",
    "devices",
    "telemetry",
    "transport",
    "control",
    "rules",
    "alarms",
    "live",
]

MIDDLEWARE = [
    "django_prometheus.middleware.PrometheusBeforeMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_prometheus.middleware.PrometheusAfterMiddleware",
    "fluxiot.middleware.SyncChainMiddleware",
]

ROOT_URLCONF = "fluxiot.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

ASGI_APPLICATION = "fluxiot.asgi.application"
WSGI_APPLICATION = None

# Database: SQLite under var/ unless DATABASE_URL says otherwise. The engines are wrapped by
# django-prometheus so /metrics carries query counts and latencies.
DATABASES = {
    "default": env.db_url("DATABASE_URL", default=f"sqlite:///{VAR_DIR / 'fluxiot.sqlite3'}"),
}
DATABASES["default"]["ENGINE"] = DATABASES["default"]["ENGINE"].replace(
    "django.db.backends.", "django_prometheus.db.backends."
)
if "postgresql" in DATABASES["default"]["ENGINE"]:
    # Under ASGI each request may run on its own thread, so Django's persistent connections would
    # pile up; psycopg's pool hands connections out per request instead (CONN_MAX_AGE must be 0).
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
        "min_size": env.int("DATABASE_POOL_MIN_SIZE", default=1),
        "max_size": env.int("DATABASE_POOL_MAX_SIZE", default=10),
        "timeout": env.float("DATABASE_POOL_TIMEOUT", default=10),
    }
    # Django then has the pool check a connection before handing it out: after a database restart
    # the pooled ones are dead, and requests would fail on them.
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
if "sqlite" in DATABASES["default"]["ENGINE"]:
    # Several embedded processes (web, worker) share one file: wait for locks instead of failing.
    DATABASES["default"].setdefault("OPTIONS", {}).update({"timeout": 20, "transaction_mode": "IMMEDIATE"})

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = env.str("REDIS_URL", default="")

if REDIS_URL:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": env.str("CACHE_KEY_PREFIX", default="fluxiot"),
        }
    }
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [REDIS_URL], "prefix": env.str("CHANNEL_LAYER_PREFIX", default="fluxiot")},
        }
    }
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = env.str("TIME_ZONE", default="UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = Path(env.str("STATIC_ROOT", default=str(VAR_DIR / "static")))
STATICFILES_DIRS = [BASE_DIR / "static"]
# Serve straight from the app folders in the embedded mode; production runs collectstatic.
WHITENOISE_USE_FINDERS = env.bool("WHITENOISE_USE_FINDERS", default=True)
if WHITENOISE_USE_FINDERS:
    STATIC_ROOT.mkdir(parents=True, exist_ok=True)
WHITENOISE_AUTOREFRESH = DEBUG

# Production behind TLS sets these.
SESSION_COOKIE_SECURE = env.bool("SESSION_COOKIE_SECURE", default=False)
CSRF_COOKIE_SECURE = env.bool("CSRF_COOKIE_SECURE", default=False)
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https") if env.bool("BEHIND_TLS_PROXY", default=False) else None

# --- REST API -----------------------------------------------------------------------------------

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework_simplejwt.authentication.JWTAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["fluxiot.api.permissions.ModelPermissions"],
    "DEFAULT_FILTER_BACKENDS": [
        "django_filters.rest_framework.DjangoFilterBackend",
        "rest_framework.filters.OrderingFilter",
    ],
    "DEFAULT_PAGINATION_CLASS": "fluxiot.api.pagination.PageNumberPagination",
    "PAGE_SIZE": env.int("API_PAGE_SIZE", default=50),
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_THROTTLE_CLASSES": [
        "fluxiot.api.throttling.AnonRateThrottle",
        "fluxiot.api.throttling.UserRateThrottle",
    ],
    "DEFAULT_THROTTLE_RATES": {
        "anon": env.str("API_THROTTLE_ANON", default="60/min"),
        "user": env.str("API_THROTTLE_USER", default="6000/min"),
    },
    "EXCEPTION_HANDLER": "fluxiot.api.exceptions.exception_handler",
    # Client addresses for throttling: REMOTE_ADDR unless trusted proxies are declared (so a client
    # cannot dodge the anonymous limit with its own X-Forwarded-For).
    "NUM_PROXIES": env.int("API_NUM_PROXIES", default=0),
    "TEST_REQUEST_DEFAULT_FORMAT": "json",
}

SIMPLE_JWT = {
    "ACCESS_TOKEN_LIFETIME": timedelta(minutes=env.int("JWT_ACCESS_MINUTES", default=15)),
    "REFRESH_TOKEN_LIFETIME": timedelta(days=env.int("JWT_REFRESH_DAYS", default=7)),
    "SIGNING_KEY": env.str("JWT_SIGNING_KEY", default=SECRET_KEY),
}

SPECTACULAR_SETTINGS = {
    "TITLE": "FluxIoT API",
    "DESCRIPTION": "Device registry, telemetry and control for IoT fleets.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
    "SCHEMA_PATH_PREFIX": "/api/v1",
    "ENUM_NAME_OVERRIDES": {
        "DeviceStatusEnum": "devices.choices.DeviceStatus",
        "DeviceTypeEnum": "devices.choices.DeviceType",
        "ProtocolEnum": "devices.choices.Protocol",
        "ActivationStateEnum": "devices.choices.ActivationState",
        "CommandStatusEnum": "control.choices.CommandStatus",
        "CommandTypeEnum": "control.choices.CommandType",
        "AlarmSeverityEnum": "alarms.choices.AlarmSeverity",
        "AlarmStatusEnum": "alarms.choices.AlarmStatus",
        "ChannelKindEnum": "alarms.choices.ChannelKind",
        "DeliveryStatusEnum": "alarms.choices.DeliveryStatus",
        "DeliveryReasonEnum": "alarms.choices.DeliveryReason",
        "NotifyOnEnum": "alarms.choices.NotifyOn",
    },
    # Swagger UI served from our own static files: the platform works offline.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
}

# --- Background work ------------------------------------------------------------------------------

# Without a Redis broker (the embedded mode) tasks run in-process, eagerly.
CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default=REDIS_URL or "memory://localhost/")
CELERY_RESULT_BACKEND = None
CELERY_TASK_ALWAYS_EAGER = env.bool("CELERY_TASK_ALWAYS_EAGER", default=not REDIS_URL)
CELERY_TASK_EAGER_PROPAGATES = True
CELERY_TASK_DEFAULT_QUEUE = env.str("CELERY_QUEUE", default="celery")
CELERY_TASK_ACKS_LATE = True
# With a Redis broker, a task taken by a worker that dies unacked goes back to the queue once this
# many seconds pass (kombu's default is an hour). Keep it above the longest task's run time.
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": env.int("CELERY_VISIBILITY_TIMEOUT", default=120)}
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = env.int("CELERY_WORKER_PREFETCH_MULTIPLIER", default=4)
CELERY_TASK_SOFT_TIME_LIMIT = env.int("CELERY_TASK_SOFT_TIME_LIMIT", default=60)
CELERY_TASK_TIME_LIMIT = env.int("CELERY_TASK_TIME_LIMIT", default=90)
# Celery's Django fixup closes every database connection, and under prefork the whole psycopg pool,
# around each task unless this is set; then it does so only every 2 × this many tasks, and
# fluxiot.celery hands the connection back to the pool after each task instead.
CELERY_DB_REUSE_MAX = env.int("CELERY_DB_REUSE_MAX", default=10_000)
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
CELERY_TIMEZONE = TIME_ZONE

# --- Device registry ------------------------------------------------------------------------------

# Bulk import limits (rows and bytes of one upload).
DEVICE_IMPORT_MAX_ROWS = env.int("DEVICE_IMPORT_MAX_ROWS", default=10_000)
DEVICE_IMPORT_MAX_BYTES = env.int("DEVICE_IMPORT_MAX_BYTES", default=5 * 1024 * 1024)
DATA_UPLOAD_MAX_MEMORY_SIZE = DEVICE_IMPORT_MAX_BYTES + 1024 * 1024
FILE_UPLOAD_MAX_MEMORY_SIZE = DATA_UPLOAD_MAX_MEMORY_SIZE
# How long a process trusts a device secret it has verified (seconds; 0: ask the database every
# time). Changes made by another process reach this one within this delay.
DEVICE_AUTH_CACHE_SECONDS = env.float("DEVICE_AUTH_CACHE_SECONDS", default=5.0)

# --- MQTT and ingestion ---------------------------------------------------------------------

# The MQTT broker. Unset (and no REDIS_URL): the embedded broker (amqtt) started by `manage.py serve`.
MQTT_URL = env.str("MQTT_URL", default="")
# The embedded mode runs the broker inside `serve`; a production setup (Redis configured) never starts
# one by accident in every web process, even if MQTT_URL was forgotten.
EMBEDDED_BROKER = env.bool("EMBEDDED_BROKER", default=not MQTT_URL and not REDIS_URL)
EMBEDDED_BROKER_HOST = env.str("EMBEDDED_BROKER_HOST", default="127.0.0.1")
EMBEDDED_BROKER_PORT = env.int("EMBEDDED_BROKER_PORT", default=1883)  # the next free port when taken
# The bridge's own broker account (a dynsec client with the bridge role in production).
MQTT_BRIDGE_USERNAME = env.str("MQTT_BRIDGE_USERNAME", default="fluxiot-bridge")
MQTT_BRIDGE_PASSWORD = env.str("MQTT_BRIDGE_PASSWORD", default="")
# Several bridges share the subscriptions ($share/<group>/...); each needs its own stable client id
# so its persistent session survives restarts.
BRIDGE_CLIENT_ID = env.str("BRIDGE_CLIENT_ID", default="fluxiot-bridge-1")
BRIDGE_SHARE_GROUP = env.str("BRIDGE_SHARE_GROUP", default="fluxiot")
BRIDGE_SESSION_EXPIRY = env.int("BRIDGE_SESSION_EXPIRY", default=3600)
BRIDGE_BATCH_SIZE = env.int("BRIDGE_BATCH_SIZE", default=1000)
BRIDGE_BATCH_MS = env.int("BRIDGE_BATCH_MS", default=50)
BRIDGE_RECEIVE_MAXIMUM = env.int("BRIDGE_RECEIVE_MAXIMUM", default=20000)
BRIDGE_METRICS_PORT = env.int("BRIDGE_METRICS_PORT", default=0)  # 0: no metrics endpoint
# Mosquitto dynamic security: the admin account that may publish to $CONTROL/dynamic-security/v1.
MQTT_DYNSEC_ENABLED = env.bool("MQTT_DYNSEC_ENABLED", default=False)
MQTT_DYNSEC_USERNAME = env.str("MQTT_DYNSEC_USERNAME", default="fluxiot-admin")
MQTT_DYNSEC_PASSWORD = env.str("MQTT_DYNSEC_PASSWORD", default="")
# PBKDF2 rounds of the broker hashes the registry stores; change it only together with rotating every
# device's credentials (stored hashes keep the rounds they were made with, `sync_broker` assumes this).
MQTT_DYNSEC_ITERATIONS = env.int("MQTT_DYNSEC_ITERATIONS", default=101)
# Seconds to wait for the broker when the registry tells it about a device (connect, then each answer).
MQTT_DYNSEC_TIMEOUT = env.float("MQTT_DYNSEC_TIMEOUT", default=5.0)

INGEST_MAX_PAYLOAD_BYTES = env.int("INGEST_MAX_PAYLOAD_BYTES", default=64 * 1024)
INGEST_MAX_KEYS = env.int("INGEST_MAX_KEYS", default=200)
INGEST_MAX_FUTURE_SECONDS = env.int("INGEST_MAX_FUTURE_SECONDS", default=300)
INGEST_MAX_AGE_DAYS = env.int("INGEST_MAX_AGE_DAYS", default=30)
DEAD_LETTER_MAX_ROWS = env.int("DEAD_LETTER_MAX_ROWS", default=10_000)
DEVICE_HEARTBEAT_TIMEOUT = env.int("DEVICE_HEARTBEAT_TIMEOUT", default=300)
# A device's last_seen_at is rewritten only when it lags this much (one row update per device every
# few seconds instead of one per batch); keep it well under the heartbeat timeout.
LAST_SEEN_RESOLUTION_SECONDS = env.float("LAST_SEEN_RESOLUTION_SECONDS", default=5.0)
TELEMETRY_PARTITION_DAYS_AHEAD = env.int("TELEMETRY_PARTITION_DAYS_AHEAD", default=7)
WORKER_METRICS_PORT = env.int("WORKER_METRICS_PORT", default=0)

# --- Device commands -------------------------------------------------------------------------

# Seconds a device has for its final reply once a command is sent (per command, up to the maximum).
COMMAND_DEFAULT_TIMEOUT = env.int("COMMAND_DEFAULT_TIMEOUT", default=30)
COMMAND_MAX_TIMEOUT = env.int("COMMAND_MAX_TIMEOUT", default=86_400)
# A command without an expiry waits this long for an offline device (seconds; 0: forever).
COMMAND_DEFAULT_EXPIRY = env.int("COMMAND_DEFAULT_EXPIRY", default=86_400)
COMMAND_BATCH_MAX_DEVICES = env.int("COMMAND_BATCH_MAX_DEVICES", default=10_000)
# Commands published per round (one transaction, one wait for the broker's acknowledgements).
COMMAND_DISPATCH_CHUNK = env.int("COMMAND_DISPATCH_CHUNK", default=1000)
# Seconds to wait for the broker (connecting, and acknowledging a round of commands).
COMMAND_PUBLISH_TIMEOUT = env.float("COMMAND_PUBLISH_TIMEOUT", default=5.0)
# How often the beat times out and expires commands, and after how long a pending command of an
# online device (its publish failed) is sent again.
COMMAND_SWEEP_SECONDS = env.float("COMMAND_SWEEP_SECONDS", default=5.0)
COMMAND_RETRY_AFTER = env.float("COMMAND_RETRY_AFTER", default=10.0)

CELERY_ACCEPT_CONTENT = ["json", "msgpack"]
CELERY_BEAT_SCHEDULE = {
    "mark-silent-devices-offline": {
        "task": "telemetry.tasks.mark_silent_devices_offline",
        "schedule": env.float("LIVENESS_CHECK_SECONDS", default=15.0),
    },
    "create-telemetry-partitions": {"task": "telemetry.tasks.create_partitions", "schedule": 3600.0},
    "trim-dead-letters": {"task": "telemetry.tasks.trim_dead_letters", "schedule": 300.0},
    "sweep-commands": {"task": "control.tasks.sweep_commands", "schedule": COMMAND_SWEEP_SECONDS},
    # Notification deliveries whose task was lost are queued again; old log rows are deleted.
    "sweep-notifications": {
        "task": "alarms.tasks.sweep_deliveries",
        "schedule": env.float("NOTIFY_SWEEP_SECONDS", default=30.0),
    },
}

# --- Rules and Wasm plugins ------------------------------------------------------------------

# Plugin sandbox (rules/plugins/host.py; docs/PLUGIN_DEV.md). Time, fuel and output are per call,
# and one call carries a whole batch of a device type's messages.
PLUGIN_MAX_MODULE_BYTES = env.int("PLUGIN_MAX_MODULE_BYTES", default=2 * 1024 * 1024)
PLUGIN_MEMORY_BYTES = env.int("PLUGIN_MEMORY_BYTES", default=16 * 1024 * 1024)
PLUGIN_TIMEOUT_MS = env.int("PLUGIN_TIMEOUT_MS", default=50)
PLUGIN_FUEL = env.int("PLUGIN_FUEL", default=50_000_000)
PLUGIN_MAX_OUTPUT_BYTES = env.int("PLUGIN_MAX_OUTPUT_BYTES", default=1024 * 1024)
# Idle instances kept per plugin and process (set it to the worker's thread count).
PLUGIN_POOL_SIZE = env.int("PLUGIN_POOL_SIZE", default=2)
# The longest timeout a rule's webhook action may ask for (seconds).
RULES_WEBHOOK_MAX_TIMEOUT = env.int("RULES_WEBHOOK_MAX_TIMEOUT", default=30)

# --- Alarms and notifications (docs/ALARMS.md) ---------------------------------------------------

# A repeated raise of an active alarm (same or lower severity) is announced on the bus (alarm.updated)
# at most once per this many seconds per alarm, so an alarm storm does not flood the live views.
ALARM_REPEAT_EVENT_SECONDS = env.float("ALARM_REPEAT_EVENT_SECONDS", default=5.0)
# Attempts a new notification channel makes before a delivery is dead (each channel has its own).
NOTIFY_MAX_ATTEMPTS = env.int("NOTIFY_MAX_ATTEMPTS", default=5)
# Seconds before the second attempt of a failed delivery, doubled for each further one, up to the maximum.
NOTIFY_RETRY_BACKOFF_SECONDS = env.float("NOTIFY_RETRY_BACKOFF_SECONDS", default=2.0)
NOTIFY_RETRY_BACKOFF_MAX_SECONDS = env.float("NOTIFY_RETRY_BACKOFF_MAX_SECONDS", default=600.0)
# Webhook channels: the default seconds to wait for an answer, and the most a channel may ask for.
NOTIFY_WEBHOOK_TIMEOUT = env.int("NOTIFY_WEBHOOK_TIMEOUT", default=10)
NOTIFY_WEBHOOK_MAX_TIMEOUT = env.int("NOTIFY_WEBHOOK_MAX_TIMEOUT", default=30)
# Seconds to wait for the SMTP server (connecting, and each answer).
NOTIFY_EMAIL_TIMEOUT = env.float("NOTIFY_EMAIL_TIMEOUT", default=10.0)
# What starts the subject of every notification email.
NOTIFY_EMAIL_SUBJECT_PREFIX = env.str("NOTIFY_EMAIL_SUBJECT_PREFIX", default="[FluxIoT] ")
# The platform's public address (https://iot.example.com), for links to alarms in notifications ("": none).
NOTIFY_BASE_URL = env.str("NOTIFY_BASE_URL", default="")
# A delivery due this many seconds ago and not attempted (its task was lost) is queued again by the sweep.
NOTIFY_SWEEP_GRACE_SECONDS = env.float("NOTIFY_SWEEP_GRACE_SECONDS", default=60.0)
# Sent and dead deliveries older than this many days are deleted from the log (0: kept forever).
NOTIFY_DELIVERY_RETENTION_DAYS = env.int("NOTIFY_DELIVERY_RETENTION_DAYS", default=30)

# Email (notification channels). Production sends through SMTP; the embedded mode (no REDIS_URL)
# prints mails on the console unless EMAIL_BACKEND says otherwise, so `make run` needs no SMTP server.
EMAIL_BACKEND = env.str(
    "EMAIL_BACKEND",
    default="django.core.mail.backends.smtp.EmailBackend"
    if REDIS_URL
    else "django.core.mail.backends.console.EmailBackend",
)
EMAIL_HOST = env.str("EMAIL_HOST", default="localhost")
EMAIL_PORT = env.int("EMAIL_PORT", default=25)
EMAIL_HOST_USER = env.str("EMAIL_HOST_USER", default="")
EMAIL_HOST_PASSWORD = env.str("EMAIL_HOST_PASSWORD", default="")
EMAIL_USE_TLS = env.bool("EMAIL_USE_TLS", default=False)  # STARTTLS (usually port 587)
EMAIL_USE_SSL = env.bool("EMAIL_USE_SSL", default=False)  # implicit TLS (usually port 465)
DEFAULT_FROM_EMAIL = env.str("DEFAULT_FROM_EMAIL", default="FluxIoT <fluxiot@localhost>")

# --- Scenes (docs/SCENES.md) ------------------------------------------------------------------

# The longest delay action, and how deep scenes may run other scenes.
SCENE_MAX_DELAY_SECONDS = env.int("SCENE_MAX_DELAY_SECONDS", default=3600)
SCENE_MAX_CHAIN_DEPTH = env.int("SCENE_MAX_CHAIN_DEPTH", default=8)
# A scene that runs (with actions) more than this many times within the window is cut off: the
# guard against loops through devices (a command whose effect triggers the scene again).
SCENE_LOOP_MAX_RUNS = env.int("SCENE_LOOP_MAX_RUNS", default=30)
SCENE_LOOP_WINDOW_SECONDS = env.float("SCENE_LOOP_WINDOW_SECONDS", default=60.0)

# --- Live updates (WebSocket /ws/events/) -------------------------------------------------------

# Seconds the admin dashboard's and group tree's counts are served from the shared cache.
DASHBOARD_CACHE_SECONDS = env.float("DASHBOARD_CACHE_SECONDS", default=3.0)

# Seconds between the {"type": "heartbeat"} frames sent on every authenticated connection.
LIVE_HEARTBEAT_SECONDS = env.float("LIVE_HEARTBEAT_SECONDS", default=20.0)
# Seconds a connection without session or ?token= has to send {"type": "auth", "token": ...}.
LIVE_AUTH_TIMEOUT_SECONDS = env.float("LIVE_AUTH_TIMEOUT_SECONDS", default=5.0)
# Telemetry updates per second per device of a subscription that does not ask for a rate, and the
# highest rate one may ask for.
LIVE_DEFAULT_RATE = env.int("LIVE_DEFAULT_RATE", default=4)
LIVE_MAX_RATE = env.int("LIVE_MAX_RATE", default=20)
# Largest client message (bytes); larger ones are answered bad_message.
LIVE_MAX_MESSAGE_BYTES = env.int("LIVE_MAX_MESSAGE_BYTES", default=16 * 1024)
# Active subscriptions per connection; one more closes the connection (4429).
LIVE_MAX_SUBSCRIPTIONS = env.int("LIVE_MAX_SUBSCRIPTIONS", default=20)
# Flood limits per connection: more subscribe messages, or more bad messages, than these within
# LIVE_FLOOD_WINDOW_SECONDS close the connection (4429).
LIVE_FLOOD_WINDOW_SECONDS = env.float("LIVE_FLOOD_WINDOW_SECONDS", default=10.0)
LIVE_MAX_SUBSCRIBES_PER_WINDOW = env.int("LIVE_MAX_SUBSCRIBES_PER_WINDOW", default=50)
LIVE_MAX_BAD_MESSAGES_PER_WINDOW = env.int("LIVE_MAX_BAD_MESSAGES_PER_WINDOW", default=20)
# Devices one subscription may select (its devices plus those of its groups and their descendants).
LIVE_MAX_DEVICES_PER_SUBSCRIPTION = env.int("LIVE_MAX_DEVICES_PER_SUBSCRIPTION", default=10_000)
# Devices whose telemetry one coalescer holds between deliveries; past it the window is cut short.
LIVE_MAX_PENDING_DEVICES = env.int("LIVE_MAX_PENDING_DEVICES", default=10_000)
# Frames queued for a connection that does not read them; past it the connection is closed (4503).
LIVE_MAX_QUEUED_FRAMES = env.int("LIVE_MAX_QUEUED_FRAMES", default=1000)

# --- Logging ------------------------------------------------------------------------------------

LOG_LEVEL = env.str("LOG_LEVEL", default="INFO")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        # Django's own default config gives "django" a handler too; one line per record is enough.
        "django": {"handlers": ["console"], "level": LOG_LEVEL, "propagate": False},
        "django.db.backends": {"level": "INFO"},
        "daphne": {"level": env.str("DAPHNE_LOG_LEVEL", default="WARNING")},
    },
}
