"""Django settings for every Arbiter process, assembled per concern from the environment.

See README.md ("Configuration") for every variable. A missing required variable stops start-up with a clear
message, and DEBUG is refused in production.
"""

from __future__ import annotations

import os
from typing import Any

from arbiter.api import spectacular
from arbiter.config import env
from arbiter.config.services import ALL_SERVICES, db_alias, enabled_services

# --- core -------------------------------------------------------------------------------------------------
ARBITER_ENV = env.env_str("ARBITER_ENV", "development")
DEBUG = env.env_bool("ARBITER_DEBUG", False)
if DEBUG and ARBITER_ENV == "production":
    raise env.SettingsError("ARBITER_DEBUG must not be on when ARBITER_ENV=production")

ARBITER_HOME = env.arbiter_home()
ARBITER_SERVICES = enabled_services()

if ARBITER_ENV == "production":
    SECRET_KEY = env.env_str("ARBITER_SECRET_KEY", required=True)
else:
    SECRET_KEY = env.env_str("ARBITER_SECRET_KEY", "arbiter-development-only-secret-key-change-me")

ALLOWED_HOSTS = env.env_list("ARBITER_ALLOWED_HOSTS", ["*"] if ARBITER_ENV != "production" else [])
CSRF_TRUSTED_ORIGINS = env.env_list("ARBITER_CSRF_TRUSTED_ORIGINS", [])
ARBITER_PUBLIC_URL = env.env_str("ARBITER_PUBLIC_URL", "http://127.0.0.1:8000")
# Behind a TLS-terminating ingress, trust its X-Forwarded-Proto header (opt in: only when a proxy sets it).
if env.env_bool("ARBITER_BEHIND_TLS_PROXY", False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

# --- apps: identity and kernel apps everywhere, service apps only where enabled -----------------------------
INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "django_htmx",
    "arbiter.config",
    "arbiter.api",
    "arbiter.tenancy",
    "arbiter.events",
    "arbiter.console",
    *[f"services.{name}" for name in ARBITER_SERVICES],
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "arbiter.api.middleware.RequestLogMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
]

ROOT_URLCONF = "arbiter.config.urls"
WSGI_APPLICATION = "arbiter.config.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "builtins": ["arbiter.console.templatetags.routes"],
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "arbiter.console.context.console",
            ],
        },
    },
]

# --- databases: one alias per service ----------------------------------------------------------------------
# Locally each service gets a SQLite file under ARBITER_HOME. With DATABASE_URL (PostgreSQL) every service gets
# its own database named `<dbname>_<service>` on that server; DATABASE_URL_<SERVICE> overrides one service.
_database_url = env.env_str("DATABASE_URL")
_db_name_override = env.env_str("ARBITER_DB_NAME")


def _service_database(service: str) -> dict[str, Any]:
    own_url = env.env_str(f"DATABASE_URL_{service.upper()}")
    if own_url:
        return env.database_from_url(own_url)
    if _database_url:
        base = env.database_from_url(_database_url)
        if base["ENGINE"].endswith("sqlite3"):
            return env.sqlite_database(ARBITER_HOME / "db" / f"{service}.sqlite3")
        prefix = _db_name_override or base["NAME"]
        base["NAME"] = f"{prefix}_{service}"
        return base
    return env.sqlite_database(ARBITER_HOME / "db" / f"{service}.sqlite3")


DATABASES = {db_alias(service): _service_database(service) for service in ALL_SERVICES}
DATABASE_ROUTERS = ["arbiter.config.routers.ServiceRouter"]
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- auth, sessions, security ----------------------------------------------------------------------------
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator", "OPTIONS": {"min_length": 10}},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
LOGIN_URL = "/signin"
LOGIN_REDIRECT_URL = "/console/"
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
SESSION_COOKIE_SECURE = ARBITER_ENV == "production"
CSRF_COOKIE_SECURE = ARBITER_ENV == "production"
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True

# --- REST API ----------------------------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "arbiter.tenancy.authentication.ApiKeyAuthentication",
        "arbiter.tenancy.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": [
        "rest_framework.parsers.JSONParser",
        "rest_framework.parsers.MultiPartParser",
        "rest_framework.parsers.FormParser",
    ],
    "DEFAULT_SCHEMA_CLASS": "arbiter.api.schema.AutoSchema",
    "DEFAULT_PAGINATION_CLASS": "arbiter.api.pagination.PagePagination",
    "EXCEPTION_HANDLER": "arbiter.api.errors.exception_handler",
    "UNAUTHENTICATED_USER": None,
}
SPECTACULAR_SETTINGS = spectacular.SPECTACULAR_SETTINGS

# --- static files (served by Arbiter itself: the console works air-gapped) ----------------------------------
STATIC_URL = "/static/"
# Set for images that run collectstatic; otherwise files are served straight from the apps (finders).
STATIC_ROOT = env.env_str("ARBITER_STATIC_ROOT")
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = DEBUG

# --- uploads and blobs --------------------------------------------------------------------------------------
ARBITER_MAX_UPLOAD_BYTES = env.env_int("ARBITER_MAX_UPLOAD_BYTES", 512 * 1024 * 1024)
DATA_UPLOAD_MAX_MEMORY_SIZE = 32 * 1024 * 1024
FILE_UPLOAD_MAX_MEMORY_SIZE = 8 * 1024 * 1024
FILE_UPLOAD_TEMP_DIR = None
ARBITER_BLOB_STORE = env.env_str("ARBITER_BLOB_STORE", str(ARBITER_HOME / "blobs"))

# --- events ------------------------------------------------------------------------------------------------
KAFKA_BOOTSTRAP_SERVERS = env.env_str("KAFKA_BOOTSTRAP_SERVERS")

# --- i18n --------------------------------------------------------------------------------------------------
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

# --- logging: one JSON object per line ---------------------------------------------------------------------
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"json": {"()": "arbiter.telemetry.logging.JsonFormatter"}},
    "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "json"}},
    "root": {"handlers": ["stderr"], "level": env.env_str("ARBITER_LOG_LEVEL", "INFO")},
    "loggers": {
        "django.server": {"level": "WARNING"},
        "kafka": {"level": "WARNING"},
        "django.request": {"level": "ERROR"},
    },
}

# Model weights never come from the network at run time unless a deployment opts in.
if env.env_bool("ARBITER_OFFLINE_MODELS", True):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
