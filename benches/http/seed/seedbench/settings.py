"""Settings of the seed's side of the loopback HTTP load test (benches/http/run.sh).

The smallest Django project that runs django-spire's `SessionController`: one app
(sessions), one middleware (sessions), no database, no templates, no CSRF, no logging of
requests. Sessions are kept in Django's cache session backend on a local-memory cache, the
nearest Django has to the Rust side's in-memory stores (see BENCHMARKS.md, "Loopback HTTP").
Not a production configuration: the secret key is a constant and only 127.0.0.1 is served.
"""

SECRET_KEY = "loopback-load-test-only"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1"]

INSTALLED_APPS = ["django.contrib.sessions"]
MIDDLEWARE = ["django.contrib.sessions.middleware.SessionMiddleware"]
ROOT_URLCONF = "seedbench.urls"
WSGI_APPLICATION = "seedbench.wsgi.application"

DATABASES = {}

# One process holds every session (a local-memory cache is per process): gunicorn runs one
# worker with threads, as the Rust servers run one process.
CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.locmem.LocMemCache",
        "OPTIONS": {"MAX_ENTRIES": 100_000},
    }
}
SESSION_ENGINE = "django.contrib.sessions.backends.cache"
# Plain HTTP on loopback, as the Rust servers' `with_secure(false)`.
SESSION_COOKIE_SECURE = False

USE_TZ = True
