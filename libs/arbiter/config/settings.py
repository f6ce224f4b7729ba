"""Django settings for every Arbiter process, assembled from the typed settings in `typed_settings.py`.

Every environment variable is declared there, one class per concern, and listed in README.md
("Configuration"). A missing or wrong variable stops start-up with a message naming it, and DEBUG is refused in
production. Code reads the typed values through `arbiter_settings()`; the few Django settings below that
repeat one (ARBITER_SERVICES, ARBITER_HOME, ...) are derived from it.
"""

from __future__ import annotations

import os

from arbiter.api import spectacular
from arbiter.config.services import ALL_SERVICES, db_alias
from arbiter.config.typed_settings import load_settings

ARBITER = load_settings()
_core = ARBITER.core

# --- core -------------------------------------------------------------------------------------------------
# Typed values repeated as Django settings (`django_mirrors` lists them; the test fixture keeps them in step).
ARBITER_ENV = _core.env
ARBITER_HOME = _core.home
ARBITER_SERVICES = _core.services
ARBITER_PUBLIC_URL = _core.public_url
ARBITER_MAX_UPLOAD_BYTES = ARBITER.dataset.max_upload_bytes
DEBUG = _core.debug
SECRET_KEY = _core.django_secret_key
ALLOWED_HOSTS = _core.django_allowed_hosts
CSRF_TRUSTED_ORIGINS = list(_core.csrf_trusted_origins)
# Behind a TLS-terminating ingress, trust its X-Forwarded-Proto header (opt in: only when a proxy sets it).
if _core.behind_tls_proxy:
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
    # Ordinary API-key classify calls are answered here, before sessions, CSRF and DRF (see its docstring).
    *(["services.inference.serving.fastpath.ClassifyFastPath"] if "inference" in ARBITER_SERVICES else []),
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
]

# WSGI applications wrapped around Django's under `arbiter serve` (innermost first), by dotted path as middleware
# are: inference answers ordinary classify calls below Django's handler (see its module).
WSGI_WRAPPERS = (
    ["services.inference.serving.fastpath.ClassifyFastPathWSGI"] if "inference" in ARBITER_SERVICES else []
)

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

# --- databases: one alias per service (see DatabaseSettings) ----------------------------------------------
DATABASES = {db_alias(service): ARBITER.databases.service_database(service) for service in ALL_SERVICES}
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
STATIC_ROOT = _core.static_root
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = DEBUG

# --- uploads (limits: DatasetSettings; blobs: StorageSettings) -------------------------------------------
DATA_UPLOAD_MAX_MEMORY_SIZE = 32 * 1024 * 1024
FILE_UPLOAD_MAX_MEMORY_SIZE = 8 * 1024 * 1024
FILE_UPLOAD_TEMP_DIR = None

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
    "root": {"handlers": ["stderr"], "level": _core.log_level},
    "loggers": {
        "django.server": {"level": "WARNING"},
        "kafka": {"level": "WARNING"},
        "django.request": {"level": "ERROR"},
    },
}

# Model weights never come from the network at run time unless a deployment opts in.
# (huggingface_hub reads HF_HUB_OFFLINE from the environment itself.)
if _core.offline_models:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
